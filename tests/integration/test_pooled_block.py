"""pooled_block: the last block at the first token gives the full forward's logits and gradients, where it applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loratune import kernels, pooled_block, prefix_cache
from loratune.train import collate, encode, eval_batches, predict_logits

from support import talking_lora_classifier

CPU = torch.device("cpu")


def _model(folder, data, tmp_path, **extra):
    cfg, dataset, tok, model = talking_lora_classifier(folder, data, tmp_path / "run", **extra)
    enc = encode(tok, dataset.validation, dataset.label_space, cfg.model.max_length)
    return model, tok, enc


def _grads(model, batch, target):
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(**batch).logits, target).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["tiny_bert", "roberta", "distilbert"])
def test_the_first_token_alone_gives_the_full_forwards_logits_and_gradients(arch, request, tiny_encoders, intent_data,
                                                                           tmp_path):
    folder = tiny_encoders[arch] if arch in tiny_encoders else request.getfixturevalue(arch)
    model, tok, enc = _model(folder, intent_data, tmp_path)
    assert len(set(enc.lengths.tolist())) > 1  # padded batches: the mask's first row is what the query reads
    full = predict_logits(model, enc, 7, tok.pad_token_id, CPU, False)
    rows = list(range(8))
    batch = collate([enc.ids[i] for i in rows], tok.pad_token_id, CPU)
    target = torch.from_numpy(enc.targets[rows])
    model.eval()  # no dropout: the two forwards must agree
    full_grads = _grads(model, batch, target)

    note = pooled_block.attach(model)
    assert note["applied"] and note["block"] == (1 if arch == "tiny_bert" else 2)  # 2 and 3 blocks
    last_hidden = model.get_base_model().base_model(**batch).last_hidden_state
    assert last_hidden.shape[1] == 1  # the last block ran at one position
    pooled = predict_logits(model, enc, 7, tok.pad_token_id, CPU, False)
    assert np.abs(full).max() > 0.1  # the comparison means something
    np.testing.assert_allclose(pooled, full, atol=1e-5 * np.abs(full).max(), rtol=0)
    pooled_grads = _grads(model, batch, target)
    assert set(pooled_grads) == set(full_grads) and any("lora_A" in n for n in pooled_grads)
    for n in full_grads:
        torch.testing.assert_close(pooled_grads[n], full_grads[n], atol=1e-5, rtol=1e-4)

    pooled_block.detach(model)  # whole again
    assert model.get_base_model().base_model(**batch).last_hidden_state.shape[1] == batch["input_ids"].shape[1]


def test_eager_attention_and_the_frozen_prefix_cache_read_the_same_first_row(tiny_bert, intent_data, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(prefix_cache, "STORE_DTYPE", np.float32)  # the cache's float16 rounding aside
    prefix_cache.clear()
    model, tok, enc = _model(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    full = predict_logits(model, enc, 7, tok.pad_token_id, CPU, False)
    model.get_base_model().set_attn_implementation("eager")  # an additive float mask [batch, 1, T, T]
    assert pooled_block.attach(model)["applied"]
    np.testing.assert_allclose(predict_logits(model, enc, 7, tok.pad_token_id, CPU, False), full,
                               atol=1e-5 * np.abs(full).max(), rtol=0)
    model.get_base_model().set_attn_implementation("sdpa")
    note = prefix_cache.attach(model, "auto", "lora", [enc], lambda ids: collate(ids, tok.pad_token_id, CPU),
                               lambda lengths: eval_batches(lengths, 5), False)
    assert note["used"], note  # only the last block runs, fed the cached states, at the first token
    np.testing.assert_allclose(predict_logits(model, enc, 7, tok.pad_token_id, CPU, False), full,
                               atol=1e-5 * np.abs(full).max(), rtol=0)
    prefix_cache.clear()


def test_training_with_dropout_through_the_lane_attention_draws_one_positions_masks(tiny_bert, intent_data, tmp_path):
    model, tok, enc = _model(tiny_bert, intent_data, tmp_path)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    model.get_base_model().config.attention_probs_dropout_prob = 0.1
    kernels.uniform_dropout(model, "cpu")
    assert kernels.lane_attention(model, "cpu")  # attention dropout from the lanes: q=1 against T keys
    assert pooled_block.attach(model)["applied"]
    model.train()
    batch = collate([enc.ids[i] for i in range(8)], tok.pad_token_id, CPU)
    grads = _grads(model, batch, torch.from_numpy(enc.targets[:8]))
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    model.eval()  # evaluation is deterministic again
    a, b = (model(**batch).logits for _ in range(2))
    torch.testing.assert_close(a, b)


def test_it_stays_off_where_the_head_does_not_read_the_first_token(tiny_llama, tiny_bert, intent_data, tmp_path):
    llama, _, _ = _model(tiny_llama, intent_data, tmp_path)
    note = pooled_block.attach(llama)
    assert not note["applied"] and "'llama'" in note["reason"]  # a decoder pools its last real token
    bert, _, _ = _model(tiny_bert, intent_data, tmp_path)
    note = pooled_block.attach(bert, "off")
    assert not note["applied"] and "off" in note["reason"]
    assert not any("forward" in vars(m) for m in bert.modules())  # nothing was patched


@pytest.mark.parametrize("model_type", sorted(pooled_block.POOLED_BLOCKS))
def test_every_architecture_in_the_table_gives_the_full_logits(model_type):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    sizes = (dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64) if model_type == "distilbert" else
             dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
    cfg = AutoConfig.for_model(model_type, vocab_size=100, num_labels=3, pad_token_id=0, **sizes)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(cfg).eval()
    ids = torch.randint(5, 100, (4, 9))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    full = model(input_ids=ids, attention_mask=mask).logits
    assert pooled_block.attach(model)["applied"]
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, full, atol=1e-6, rtol=1e-4)
