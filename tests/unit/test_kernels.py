"""kernels.UniformDropout: nn.Dropout's distribution from a uniform draw; uniform_dropout swaps only on CPU."""

import torch
from torch import nn

from loratune.kernels import UniformDropout, dropout_record, uniform_dropout


def test_uniform_dropout_drops_at_rate_p_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = UniformDropout(0.3)(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.005  # binomial SE at n=200k is 0.001
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.01


def test_uniform_dropout_is_identity_in_eval_and_at_p0_and_passes_gradients_through_kept_elements():
    x = torch.randn(64, 8, requires_grad=True)
    d = UniformDropout(0.5)
    d.eval()
    assert d(x) is x
    assert UniformDropout(0.0)(x) is x
    d.train()
    y = d(x)
    y.sum().backward()
    kept = y.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 2.0))
    assert torch.all(x.grad[~kept] == 0)


def test_uniform_dropout_in_bf16_keeps_the_dtype_and_the_rate():
    torch.manual_seed(1)
    y = UniformDropout(0.1)(torch.ones(100_000, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert abs((y == 0).float().mean().item() - 0.1) < 0.005


def test_uniform_dropout_swaps_every_active_dropout_on_cpu_only():
    def net():
        return nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1),
                             nn.ModuleDict({"default": nn.Dropout(0.2), "off": nn.Dropout(0.0)}))
    m = net()
    m.eval()
    assert uniform_dropout(m, "cpu") == 2
    assert type(m[1]) is UniformDropout and m[1].p == 0.1 and not m[1].training  # the mode is kept
    assert type(m[2]["default"]) is UniformDropout and m[2]["default"].p == 0.2
    assert type(m[2]["off"]) is nn.Dropout  # p = 0 draws nothing: left alone
    other = net()
    assert uniform_dropout(other, "cuda") == 0 and type(other[1]) is nn.Dropout
    assert dropout_record(2)["kernel"] == "uniform" and dropout_record(0)["kernel"] == "torch"
