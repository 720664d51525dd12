"""Model facts from the model's config alone (no weights): type, layers, hidden size, positions."""

from __future__ import annotations

from dataclasses import dataclass

from loratune.config import ModelConfig, RunConfig


@dataclass(frozen=True)
class ModelInfo:
    model_type: str | None
    num_layers: int | None
    hidden_size: int | None
    max_positions: int | None
    # the longest input the positions index (position_limit, the rule check_max_length applies); None where rotary,
    # relative or unbounded (Llama: max_positions 256, no limit: a longer input runs)
    position_limit: int | None = None


def describe_model(cfg: ModelConfig) -> ModelInfo | None:
    """Layers, hidden size and positions from the model's config (no weights loaded); None if unreadable."""
    from loratune.errors import UserError
    from loratune.models import load_model_config

    try:
        c = load_model_config(cfg)
    except UserError:  # the tokenizer / model load reports the real problem
        return None

    def first(*names):
        for n in names:
            v = getattr(c, n, None)
            if isinstance(v, int):
                return v
        return None

    model_type = getattr(c, "model_type", None)
    positions = first("max_position_embeddings", "n_positions", "max_seq_len")
    # the positions an input can use: RoBERTa's reserved rows are no token's (66 rows take 64 tokens), so a
    # max_length proposed from the raw count was refused by train and crashed every tune trial
    usable = None if positions is None else positions - POSITION_OFFSET.get(model_type, 0)
    return ModelInfo(model_type, first("num_hidden_layers", "n_layer", "num_layers"),
                     first("hidden_size", "n_embd", "d_model"), usable, position_limit(c))


# model types whose learned position ids start after the padding index (RoBERTa's `create_position_ids_from_input_ids`):
# max_position_embeddings counts those reserved rows too (514 for 512 tokens)
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2, "mpnet": 2, "data2vec-text": 2,
                   "roberta-prelayernorm": 2, "xlm-roberta-xl": 2, "xmod": 2}


# model types whose config carries max_position_embeddings (or its alias) though nothing stops at it: no limit to
# check. By the reason each is unbounded:
_NO_POSITIONS = "no positional embeddings (a Mamba / linear-attention hybrid)"
_GROWING_SINUSOIDS = "a sinusoidal table rebuilt for any longer input (make_weights in its forward)"
_RECURRENT = "a recurrent model: no positions (context_length sizes its optional CUDA kernel's chunk)"
UNBOUNDED_POSITIONS = {
    **dict.fromkeys(("jamba", "zamba", "nemotron_h", "kimi_linear", "inkling_text", "inkling2_text"), _NO_POSITIONS),
    **dict.fromkeys(("xglm", "m2m_100", "nllb-moe", "fsmt", "seamless_m4t", "seamless_m4t_v2", "musicgen_decoder",
                     "musicgen_melody_decoder"), _GROWING_SINUSOIDS),
    "rwkv": _RECURRENT,
}


def input_position_limit(cfg: ModelConfig) -> int | None:
    """The longest input the model's learned absolute position embeddings can index (a longer `max_length` fails
    inside the embedding), or None where positions are rotary or relative (Llama, DeBERTa-v3, T5) or unknown."""
    from loratune.errors import UserError
    from loratune.models import load_model_config

    try:
        c = load_model_config(cfg)
    except UserError:
        return None
    return position_limit(c)


def position_limit(c) -> int | None:
    """input_position_limit of a transformers config already loaded (`loratune plan` reads one without a ModelConfig):
    the one rule for both, and for every task: a decoder's learned positions (OPT, GPT-2, StarCoder, BioGPT) or its
    fixed sinusoid table (GPT-J, CodeGen) end where an encoder's do; rotary decoders say so by their rope fields, and
    the model types UNBOUNDED_POSITIONS names (a growing sinusoid table: XGLM, M2M100; RWKV) have no end."""
    if getattr(c, "rope_theta", None) is not None or getattr(c, "rope_scaling", None) is not None \
            or getattr(c, "rope_parameters", None) is not None \
            or getattr(c, "position_embedding_type", "absolute") != "absolute" \
            or getattr(c, "position_biased_input", True) is False \
            or getattr(c, "model_type", None) in UNBOUNDED_POSITIONS:
        return None
    n = next((v for v in (getattr(c, k, None) for k in ("max_position_embeddings", "n_positions"))
              if isinstance(v, int)), None)
    if n is None or n < 1:  # XLNet's -1: relative positions, no limit
        return None
    return n - POSITION_OFFSET.get(getattr(c, "model_type", None), 0)


def check_max_length(cfg: RunConfig, dataset=None) -> None:
    """A UserError where `max_length` and the tokens a causal-lm run generates after it are longer than the model's
    position embeddings index (it would fail inside the embedding at the first batch, or at the first evaluation
    point's generation), for every task (position_limit's rule): the one check `train` (api.check) and `tune` (before
    its first trial) run. `dataset`: the run's prepared data (its prompt set, its generated labels), when read."""
    from loratune.config import key_table
    from loratune.errors import UserError

    limit = input_position_limit(cfg.model)
    if limit is None:
        return
    length = cfg.model.max_length
    generated = generated_tokens(cfg, dataset)
    new = max((n for n, _ in generated.values()), default=0)
    if length + new <= limit:
        return
    key, what = next(((k, said) for k, (n, said) in generated.items() if n == new), ("", ""))
    fixes = []
    if limit - new >= key_table()["model.max_length"].metadata["min"]:
        fixes.append(f"set max_length={limit - new} or less")
    fits = cfg.train.max_new_tokens - (length + new - limit)  # the prompt set's answer, less what runs over
    if key == PROMPT_SET_GENERATES and fits >= 1 and limit - length >= max(
            [0] + [n for k, (n, _) in generated.items() if k != key]):
        fixes.append(f"train.max_new_tokens={fits} or less")
    said = f"model.max_length {length}" + (f" plus the {new} tokens {what}" if new else "")
    raise UserError(f"{said} {'are' if new else 'is'} longer than {cfg.model.name_or_path} takes: its position "
                    f"embeddings cover {limit} tokens",
                    ", or ".join(fixes) or f"use a model whose position embeddings cover more than {limit} tokens")


# what a causal-lm run generates after a prompt cut to max_length (sft_data.encode_prompts), as check_max_length says
# it: the prompt set's train.max_new_tokens at every evaluation point; a generated label's tokens (data.label_format=
# generate: the longest label's tokens and 2, sft.label_token_cap); each after the chat template's answer prefix
# (sft_data.answer_prefix, sft.answer_tokens: Qwen3's empty think block), where it writes one
PROMPT_SET_GENERATES = "generated after a prompt-set prompt (train.max_new_tokens{prefix})"
LABEL_GENERATES = "generated for a label (data.label_format=generate: the longest label's tokens and 2{prefix})"
ANSWER_PREFIX_GENERATES = ", after the {n} tokens the chat template writes before every answer"


def generated_tokens(cfg: RunConfig, dataset=None) -> dict[str, tuple[int, str]]:
    """The tokens a causal-lm run generates after a prompt of up to max_length tokens, by what generates them
    (keyed PROMPT_SET_GENERATES, LABEL_GENERATES): (tokens, what generates them as said, with the template's answer
    prefix); empty for a run that generates nothing. A generated label's tokens are read with the tokenizer, from the
    dataset's labels."""
    if cfg.model.task != "causal-lm":
        return {}
    prompt_set = getattr(dataset, "prompt_set", None) or cfg.data.prompt_set
    space = getattr(dataset, "label_space", None)
    labels = space.labels if cfg.data.label_format == "generate" and space is not None else ()
    if not (prompt_set or labels):
        return {}
    from loratune.models import load_tokenizer
    from loratune.sft import answer_tokens, label_token_cap
    from loratune.sft_data import Renderer, answer_prefix

    tokenizer = load_tokenizer(cfg.model)
    prefix = answer_prefix(tokenizer, Renderer.for_tokenizer(tokenizer, cfg.data.chat_template))
    said = ANSWER_PREFIX_GENERATES.format(n=len(prefix)) if prefix else ""
    out = {}
    if prompt_set:
        out[PROMPT_SET_GENERATES] = (answer_tokens(cfg.train.max_new_tokens, prefix),
                                     PROMPT_SET_GENERATES.format(prefix=said))
    if labels:
        out[LABEL_GENERATES] = (answer_tokens(label_token_cap(tokenizer, labels), prefix),
                                LABEL_GENERATES.format(prefix=said))
    return out
