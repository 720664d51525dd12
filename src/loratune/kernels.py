"""Cheaper CPU kernels for the same training arithmetic (issue 17's levers; bench/levers.py measures each).

Dropout. On CPU, torch's dropout draws its mask with `bernoulli_`, which costs about twice a uniform draw
(`torch.rand`) of the same size: on MiniLM with LoRA (bench/throughput.py's config (a)), the 36 dropout masks of a
step (30 from modules, 6 inside SDPA) took about a third of a bf16 training step's time. `UniformDropout` draws
its mask from torch's generator too, but as 64-bit words cut into four 16-bit lanes, one lane per element: half
the generator's 32-bit draws of `torch.rand` (one per element; a 64-bit word is two).
An element is dropped when its lane falls below `round(p * 2**16)` of the lane's 2**16 values, and the kept ones
are scaled by 1/(1 - p'), where p' = round(p * 2**16) / 2**16 is the drop rate that runs (within 2**-17 of p:
8e-6 absolute; a float32 `torch.rand` draw resolves p to 2**-24): the same distribution as `nn.Dropout`
(elements dropped independently, the expectation unchanged), from a different random stream, so a run is
reproducible from its seed but not bit-identical to one that used `nn.Dropout`. As in torch's CPU dropout (its mask
tensor `noise.div_(1 - p)` has the input's dtype), the scaled mask is held in the input's dtype: on a bf16 tensor the
scale is 1/(1 - p') to bf16's 8 significant bits (1.109375 for p = 0.1, 0.16% under 1/0.9), exactly what
`nn.Dropout` multiplies a bf16 tensor by. Only on CPU: CUDA's fused dropout is already cheap.

Attention dropout. The attention-probability dropout is not a module: BERT-style encoders pass its p to the
attention function, and torch's SDPA then takes its math path and draws the mask with `bernoulli_` (6 of config
(a)'s 36 masks, about 7% of a bf16 step once the modules' masks came from lanes). `lane_attention` registers an
attention function with transformers' AttentionInterface (and SDPA's mask format with AttentionMaskInterface)
that, while training on CPU with p > 0, computes what SDPA's math path computes (scores, mask, softmax, dropout,
weighted sum) with the mask from `keep_mask`, and otherwise calls transformers' SDPA function unchanged
(evaluation, p = 0, a causal or grouped-query attention).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from loratune.heads import transformers_model

LANE = torch.int16  # one mask element per 16-bit lane of a random 64-bit word
LANE_VALUES = 2 ** torch.iinfo(LANE).bits  # values a lane takes, uniformly: the drop rate's resolution is 1 / this
LANES_PER_WORD = torch.iinfo(torch.int64).bits // torch.iinfo(LANE).bits


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, float]:
    """A boolean mask of `shape`, True (keep) with probability 1 - p', and the scale 1/(1 - p') that keeps
    the expectation; p' = round(p * LANE_VALUES) / LANE_VALUES. The words come from torch's default generator
    (`random_` over the full int64 range), so `torch.manual_seed` makes the masks reproducible."""
    n = math.prod(shape)
    dropped_values = round(p * LANE_VALUES)
    words = torch.empty(-(-n // LANES_PER_WORD), dtype=torch.int64, device=device).random_(-2 ** 63, None)
    lanes = words.view(LANE)[:n].view(shape)
    return lanes >= torch.iinfo(LANE).min + dropped_values, LANE_VALUES / (LANE_VALUES - dropped_values)


class UniformDropout(nn.Dropout):
    """nn.Dropout whose mask comes from 16-bit lanes of random 64-bit words (`keep_mask`) instead of `bernoulli_`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if round(self.p * LANE_VALUES) >= LANE_VALUES:  # p = 1 (to the lanes' resolution): nothing is kept
            return x * 0.0
        keep, scale = keep_mask(x.shape, self.p, x.device)
        keep = keep.to(x.dtype).mul_(scale)
        return x.mul_(keep) if self.inplace else x * keep


LANE_ATTENTION = "loratune_lane_dropout_sdpa"  # the name registered with transformers' attention interfaces


def _lane_dropout_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                            **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: [batch, heads, q, d] in, [batch, q, heads, d] out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (dropout == 0.0 or not module.training or getattr(module, "is_causal", False)
            or getattr(module, "num_key_value_groups", 1) > 1 or query.shape[1] != key.shape[1]):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:  # SDPA's format: True = attend, or an additive float mask
        scores = (scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)  # not -inf: no NaN row
                  if attention_mask.dtype == torch.bool else scores + attention_mask)
    probs = torch.softmax(scores, dim=-1)
    keep, scale = keep_mask(probs.shape, dropout, probs.device)
    out = torch.matmul(probs * keep.to(probs.dtype).mul_(scale), value)
    return out.transpose(1, 2).contiguous(), None


def lane_attention(model: nn.Module, device_type: str) -> bool:
    """On CPU, switch an encoder that runs transformers' SDPA with attention dropout (p > 0) to the attention
    function above. Returns whether it switched (False on other devices, without attention dropout, for a causal
    model, or where transformers does not let the implementation be set)."""
    if device_type != "cpu":
        return False
    base = transformers_model(model)
    cfg = getattr(base, "config", None)
    p = getattr(cfg, "attention_probs_dropout_prob", None) or getattr(cfg, "attention_dropout", 0.0)
    if cfg is None or not p or getattr(cfg, "_attn_implementation", None) != "sdpa":
        return False
    if any(getattr(m, "is_causal", False) for m in base.modules()):  # a decoder: every call would fall back
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(LANE_ATTENTION, _lane_dropout_attention)
    AttentionMaskInterface.register(LANE_ATTENTION, sdpa_mask)
    base.set_attn_implementation(LANE_ATTENTION)
    return cfg._attn_implementation == LANE_ATTENTION


def uniform_dropout(model: nn.Module, device_type: str) -> int:
    """Swap every `nn.Dropout` (p > 0) in `model` for a `UniformDropout` of the same p, on CPU only. Returns how
    many were swapped (0 on other devices)."""
    if device_type != "cpu":
        return 0
    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout and child.p > 0.0:
                new = UniformDropout(child.p, child.inplace)
                new.train(child.training)
                setattr(parent, name, new)
                swapped += 1
    return swapped


def dropout_record(swapped: int, attention: bool = False) -> dict:
    """run.json's `dropout`: which kernel drew the masks, for how many modules, and for attention probabilities."""
    if swapped or attention:
        return {"kernel": "uniform", "modules": swapped, "attention": "lanes" if attention else "torch",
                "note": "masks from 16-bit lanes of torch's random 64-bit words (kernels.UniformDropout"
                        + (", kernels.lane_attention" if attention else "") + "): "
                        "nn.Dropout's distribution with p to 2**-17, another random stream"}
    return {"kernel": "torch", "modules": None, "attention": "torch", "note": "dropout as torch runs it"}
