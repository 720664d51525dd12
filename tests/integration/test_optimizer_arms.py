"""LoRA+ and DoRA, the arms the tuner can try: LoRA+ gives the B matrices ratio x the lr of the A
matrices (as peft's create_loraplus_optimizer groups them); DoRA trains a magnitude beside the adapter."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from loratune import api
from loratune.config import build_config, load_config
from loratune.train import build_optimizer

from support import overrides


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.v, self.classifier = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.classifier(self.q(x) + self.v(x))


def _peft_tiny():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    return get_peft_model(_Tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"],
                                              modules_to_save=["classifier"]))


def _lrs(model, opt) -> dict[str, float]:
    by_id = {id(p): g.get("initial_lr", g["lr"]) for g in opt.param_groups for p in g["params"]}  # peak lr (warmup)
    return {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("head_lr", [None, 3e-3])
def test_loraplus_gives_b_matrices_ratio_times_the_lr_of_a(head_lr):
    model = _peft_tiny()
    cfg = build_config({"train.optimizer": "loraplus", "train.learning_rate": 1e-3, "train.loraplus_lr_ratio": 16.0,
                        "train.head_learning_rate": head_lr})
    opt, _ = build_optimizer(model, cfg, 10, torch.device("cpu"))
    lrs = _lrs(model, opt)
    a = {n: lr for n, lr in lrs.items() if "lora_A" in n}
    b = {n: lr for n, lr in lrs.items() if "lora_B" in n}
    assert len(a) == len(b) == 2
    assert list(a.values()) == [1e-3] * 2 and list(b.values()) == pytest.approx([1.6e-2] * 2)  # ratio x
    head = {n: lr for n, lr in lrs.items() if "classifier" in n}
    assert head and set(head.values()) == {head_lr or 1e-3}  # the head keeps its own lr, bias included
    # the LoRA matrices get the lrs peft's own LoRA+ optimizer gives them
    from peft.optimizers import create_loraplus_optimizer

    ref = _lrs(model, create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=16.0))
    assert {n: ref[n] for n in (*a, *b)} == pytest.approx({**a, **b})
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for p in model.parameters() if p.requires_grad)  # every trained weight once


def test_adamw_gives_a_and_b_the_same_lr():
    model = _peft_tiny()
    opt, _ = build_optimizer(model, build_config({"train.learning_rate": 1e-3}), 10, torch.device("cpu"))
    assert {lr for n, lr in _lrs(model, opt).items() if "lora_" in n} == {1e-3}


def test_loraplus_and_dora_are_lora_only():
    with pytest.raises(Exception, match="LoRA\\+ and DoRA only with adapter.method=lora"):
        build_config({"adapter.method": "full", "adapter.use_dora": True})


def test_a_dora_run_with_loraplus_trains_and_saves_a_dora_adapter(tiny_bert, intent_data, tmp_path):
    cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", use_dora="true", optimizer="loraplus",
                                      max_steps=8))
    run = api.train(cfg, progress=False)
    assert run["status"] == "completed"
    adapter_cfg = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["use_dora"] is True
    # the magnitude vectors (one per output feature of each adapted layer) count as adapter parameters
    r, sites = 4, 2 * 2  # attn.q, attn.v in 2 layers, 32 x 32 each
    assert run["params"]["adapter"] == sites * (r * (32 + 32) + 32)
