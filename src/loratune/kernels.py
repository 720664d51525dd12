"""Cheaper CPU kernels for the same training arithmetic (issue 17's levers; bench/levers.py measures each).

Dropout. On CPU, torch's dropout draws its mask with `bernoulli_`, which costs about twice a uniform draw
(`torch.rand`) of the same size: on MiniLM with LoRA (bench/throughput.py's config (a)), the 36 dropout masks of a
step (30 from modules, 6 inside SDPA) took about a third of a bf16 training step's time. `UniformDropout` keeps an element when
its uniform draw is >= p and scales the kept ones by 1/(1-p): the same distribution as `nn.Dropout` (each
element dropped independently with probability p, the expectation unchanged), from a different random stream,
so a run is reproducible from its seed but not bit-identical to one that used `nn.Dropout`. Only on CPU: CUDA's
fused dropout is already cheap. The attention-probability dropout inside SDPA is not a module and is left as is.
"""

from __future__ import annotations

import torch
from torch import nn


class UniformDropout(nn.Dropout):
    """nn.Dropout whose mask comes from one uniform draw (`torch.rand`) instead of `bernoulli_`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * 0.0
        keep = (torch.rand(x.shape, device=x.device) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
        return x.mul_(keep) if self.inplace else x * keep


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


def dropout_record(swapped: int) -> dict:
    """run.json's `dropout`: which kernel drew the masks, and for how many modules."""
    if swapped:
        return {"kernel": "uniform", "modules": swapped,
                "note": "masks from torch.rand (kernels.UniformDropout): nn.Dropout's distribution, another random stream"}
    return {"kernel": "torch", "modules": None, "note": "nn.Dropout as torch runs it"}
