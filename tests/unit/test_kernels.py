"""kernels.UniformDropout: nn.Dropout's distribution from random 16-bit lanes; uniform_dropout swaps only on CPU."""

import torch
from torch import nn

from loratune.kernels import (LANE_ATTENTION, LANE_VALUES, UniformDropout, _lane_dropout_attention, dropout_record,
                              keep_mask, lane_attention, uniform_dropout)


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
    assert dropout_record(2, True)["attention"] == "lanes" and dropout_record(2)["attention"] == "torch"


def test_keep_mask_drops_at_p_in_each_of_a_words_four_lanes_and_follows_the_seed():
    torch.manual_seed(3)
    keep, scale = keep_mask((400_000,), 0.1)
    dropped_values = round(0.1 * LANE_VALUES)
    assert scale == LANE_VALUES / (LANE_VALUES - dropped_values)
    assert abs(dropped_values / LANE_VALUES - 0.1) < 2 ** -17  # the drop rate that runs
    lanes = keep.view(-1, 4)  # element j of every group of four comes from lane j of a word (lane 3: the sign bits)
    for j in range(4):
        assert abs((~lanes[:, j]).float().mean().item() - 0.1) < 0.004  # binomial SE at n=100k is 0.00095
    torch.manual_seed(3)
    assert torch.equal(keep_mask((400_000,), 0.1)[0], keep)
    odd, _ = keep_mask((3, 5), 0.5)  # a size that is not a whole number of words
    assert odd.shape == (3, 5) and odd.dtype == torch.bool


def test_uniform_dropout_at_p_one_keeps_nothing():
    y = UniformDropout(1.0)(torch.ones(10))
    assert torch.all(y == 0)


def _tiny_bert(attention_dropout: float):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=attention_dropout))


def test_lane_attention_computes_sdpa_with_padding_and_draws_the_attention_dropout_from_lanes():
    model = _tiny_bert(0.3)
    ids = torch.randint(1, 100, (4, 9))
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[0, 5:] = 0
    mask[1, 7:] = 0

    def hidden():
        return model.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    model.eval()
    sdpa = hidden()
    assert lane_attention(model, "cpu") and model.config._attn_implementation == LANE_ATTENTION
    assert torch.allclose(hidden(), sdpa, atol=1e-6)  # evaluation: SDPA itself
    model.train()
    for layer in model.bert.encoder.layer:  # p > 0 takes the lanes path, but rounds to no dropped lane value
        layer.attention.self.dropout.p = 1e-9
    assert torch.allclose(hidden(), sdpa, atol=1e-5)  # the same arithmetic, padding masked
    for layer in model.bert.encoder.layer:
        layer.attention.self.dropout.p = 0.3
    torch.manual_seed(5)
    first = hidden()
    first.sum().backward()
    assert (first - sdpa).abs().max() > 1e-3  # dropped attention weights change the states (100x the tolerance)
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0
    torch.manual_seed(5)
    assert torch.equal(hidden(), first)  # the seed fixes the masks


def test_lane_attention_leaves_models_without_attention_dropout_other_devices_and_decoders_alone():
    from transformers import LlamaConfig, LlamaForCausalLM

    assert not lane_attention(_tiny_bert(0.0), "cpu")
    assert not lane_attention(_tiny_bert(0.1), "cuda")
    decoder = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, num_key_value_heads=2, attention_dropout=0.1))
    assert not lane_attention(decoder, "cpu") and decoder.config._attn_implementation == "sdpa"


def test_the_lane_attention_function_drops_attention_weights_at_rate_p_and_rescales_the_kept():
    module = nn.Module()  # training, not causal: the lanes path
    length = 16
    zeros = torch.zeros(64, 4, length, 8)
    value = torch.eye(length).expand(64, 4, length, length)  # output row i = the (dropped) attention row i
    torch.manual_seed(2)
    out, _ = _lane_dropout_attention(module, zeros, zeros, value, None, dropout=0.25)
    assert out.shape == (64, length, 4, length)
    assert abs((out == 0).float().mean().item() - 0.25) < 0.01  # 262k weights: binomial SE 0.0008
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / length / 0.75))  # uniform softmax, scaled by 1/(1-p)
