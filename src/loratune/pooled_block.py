"""The last block at the pooled position only: an encoder classifier reads one position of its last block.

A BERT-style sequence classifier pools the first token (`[CLS]`, `<s>`): BERT's pooler takes `hidden[:, 0]`,
RoBERTa's and DistilBERT's heads take `features[:, 0]`. Every operation of a transformer block is per-position
except self-attention, which mixes positions through its keys and values. So in the last block only the first
position's output ever reaches the loss: its query, its attention row, its output projection and its feed-forward
need computing, while keys and values still need every position. Everything below the last block is unchanged
(the last block's keys and values read every position of its input).

What this saves of the last block, per token: the query, output and both feed-forward projections (10 of its 12
hidden x hidden units of matrix work for a 4x feed-forward), forward and backward, and the attention scores shrink
from T x T to 1 x T. On all-MiniLM-L6-v2 (6 blocks) that is about 14% of a training step's matrix work, and as
much of every evaluation; with the frozen-prefix cache (only the top blocks run) a larger share.

The arithmetic is the model's own for that position (its modules, its attention function through transformers'
AttentionInterface, its mask's first query row), so logits match the full forward's to rounding (tests assert it).
What differs while training: the dropout masks of the last block's attention output and feed-forward are drawn
for one position instead of T, so the random stream after them differs from the full forward's (a run is
reproducible from its seed, not bit-identical to one with `train.pooled_last_block=off`).

Architectures: those in `POOLED_BLOCKS` whose head reads the first token (`*ForSequenceClassification`). Others
(decoders, which pool the last non-pad token; DeBERTa's relative attention; token-level heads) run as they are;
`attach` says why. The last block's output is then [batch, 1, hidden]: a caller asking for every position's last
hidden state (`output_hidden_states`) must use a model this was not attached to.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from loratune.heads import transformers_model


def _first_row(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The mask the first query reads: a 4-d mask [batch, 1, queries, keys] keeps its first query row; a mask
    already shaped for one query (or None, or a 2-d padding mask some implementations take) is passed as is."""
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        return attention_mask[:, :, :1, :]
    return attention_mask


def _attend_first(attn: nn.Module, q: nn.Module, k: nn.Module, v: nn.Module, hidden: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs) -> torch.Tensor:
    """`attn`'s self-attention for the first position's query over every key: [batch, 1, heads x head_size].
    The same calls as transformers' BERT / DistilBERT attention forward, with one query row."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    batch, length, _ = hidden.shape
    size = attn.attention_head_size
    query = q(hidden[:, :1]).view(batch, 1, -1, size).transpose(1, 2)
    key = k(hidden).view(batch, length, -1, size).transpose(1, 2)
    value = v(hidden).view(batch, length, -1, size).transpose(1, 2)
    fn = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager_attention_forward)
    out, _ = fn(attn, query, key, value, _first_row(attention_mask),
                dropout=attn.dropout.p if attn.training else 0.0, scaling=attn.scaling, **kwargs)
    return out.reshape(batch, 1, -1).contiguous()


_NOT_FOR_ATTENTION = ("encoder_hidden_states", "encoder_attention_mask", "past_key_values", "position_ids",
                      "output_attentions", "use_cache", "cache_position")


def _bert_block(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BertLayer.forward (and RoBERTa's, ELECTRA's ...) at the first position: [batch, 1, hidden]."""
    kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_FOR_ATTENTION}
    sa = self.attention.self
    context = _attend_first(sa, sa.query, sa.key, sa.value, hidden_states, attention_mask, **kwargs)
    attention_output = self.attention.output(context, hidden_states[:, :1])
    return self.feed_forward_chunk(attention_output)


def _distilbert_block(self, hidden_states, attention_mask=None, *args, **kwargs):
    """DistilBERT's TransformerBlock.forward at the first position: [batch, 1, hidden]."""
    kwargs = {k: v for k, v in kwargs.items() if k not in _NOT_FOR_ATTENTION}
    sa = self.attention
    context = _attend_first(sa, sa.q_lin, sa.k_lin, sa.v_lin, hidden_states, attention_mask, **kwargs)
    attention_output = self.sa_layer_norm(sa.out_lin(context) + hidden_states[:, :1])
    return self.output_layer_norm(self.ffn(attention_output) + attention_output)


@dataclass(frozen=True)
class PooledBlock:
    blocks: str  # dotted path of the block list inside the backbone (`model.base_model`)
    forward: Callable  # the last block's forward at the first position
    block_class: str  # the class that forward mirrors: any other class in that slot is left alone


# model_type -> how its last block runs at the first position. The heads of these types' *ForSequenceClassification
# read hidden[:, 0] only (BERT through its pooler).
_BERT = PooledBlock("encoder.layer", _bert_block, "Layer")
POOLED_BLOCKS: dict[str, PooledBlock] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _BERT,
    "distilbert": PooledBlock("transformer.layer", _distilbert_block, "TransformerBlock"),
}


def attach(model: nn.Module, setting: str = "auto") -> dict:
    """Run `model`'s last block at the first position only, where that is exact (see the module docstring).
    `model`: a transformers sequence classifier, or a peft model around one. Returns run.json's
    `pooled_last_block`: {"applied": bool, "reason": str, and, when applied, "block": its index}."""
    if setting == "off":
        return {"applied": False, "reason": "train.pooled_last_block=off: every block runs at every position"}
    base = transformers_model(model)
    cfg = getattr(base, "config", None)
    model_type = getattr(cfg, "model_type", None)
    spec = POOLED_BLOCKS.get(model_type)
    if spec is None:
        return {"applied": False, "reason": f"model_type {model_type!r} is not in pooled_block.POOLED_BLOCKS "
                                            "(its head may not read the first token only)"}
    if not type(base).__name__.endswith("ForSequenceClassification"):
        return {"applied": False, "reason": f"{type(base).__name__} is not a sequence classifier"}
    blocks = base.base_model
    for part in spec.blocks.split("."):
        blocks = getattr(blocks, part, None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        return {"applied": False, "reason": f"no block list at {spec.blocks}"}
    last = blocks[-1]
    if not type(last).__name__.endswith(spec.block_class):
        return {"applied": False, "reason": f"the last block is a {type(last).__name__}, not a *{spec.block_class}"}
    if getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        return {"applied": False, "reason": "a decoder or cross-attention configuration"}
    last.forward = types.MethodType(spec.forward, last)
    return {"applied": True, "block": len(blocks) - 1,
            "reason": f"the {type(base).__name__} head reads the first token only: block {len(blocks) - 1} runs "
                      "its query, output and feed-forward there, its keys and values at every position"}


def detach(model: nn.Module) -> None:
    """Undo `attach`: every block runs at every position again."""
    base = transformers_model(model)
    for module in base.modules():
        if "forward" in vars(module) and getattr(module.forward, "__func__", None) in (
                spec.forward for spec in POOLED_BLOCKS.values()):
            del module.forward
