"""Evaluation's forward (issue 17): plain LoRA layers run merged (bit-identical while B is zero, float rounding
otherwise), the thread count is picked per pass, and neither changes the logits nor leaves a trace on the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loratune import adapt, api, train as train_mod
from loratune.adapt import apply_adapter, merged_for_eval
from loratune.config import load_config
from loratune.models import load_classifier, load_tokenizer
from loratune.train import collate, encode, eval_batches, eval_collate, faster_on_one_thread, predict_logits

from support import overrides

CPU = torch.device("cpu")


def _model(folder, data, tmp_path, trained: bool, **extra):
    cfg = load_config(None, overrides(folder, data, tmp_path / "run", target_modules="[attn.q, attn.v, ffn]",
                                      **extra))
    dataset = api.prepare(cfg)
    tok = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model, _ = apply_adapter(load_classifier(cfg.model, len(dataset.label_space), False), cfg.adapter)
    if trained:  # LoRA B starts at zero: give the adapter something to say
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.5)
    model.train()
    return model, tok, encode(tok, dataset.validation, dataset.label_space, cfg.model.max_length)


@torch.inference_mode()
def _unmerged_logits(model, enc, pad_id, batch_size=3) -> np.ndarray:
    """The evaluation loop as it was before issue 17's round 4: peft's own (unmerged) forward."""
    model.eval()
    out = np.zeros((len(enc.ids), model.config.num_labels), dtype=np.float32)
    for rows in eval_batches(enc.lengths, batch_size, enc.max_length):  # each text padded as scoring pads it
        batch = eval_collate([enc.ids[i] for i in rows], pad_id, CPU, enc.max_length)
        out[rows] = model(**batch).logits.float().numpy()
    model.train()
    return out


def _lora_layers(model):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_llama"])
def test_untrained_adapter_gives_bit_identical_logits(arch, request, intent_data, tmp_path):
    model, tok, val = _model(request.getfixturevalue(arch), intent_data, tmp_path, trained=False)
    want = _unmerged_logits(model, val, tok.pad_token_id)
    assert np.abs(want).max() > 0.01
    np.testing.assert_array_equal(predict_logits(model, val, 3, tok.pad_token_id, CPU, False), want)


@pytest.mark.parametrize("arch", ["tiny_bert", "tiny_llama"])
def test_trained_adapter_runs_merged_with_the_same_predictions(arch, request, intent_data, tmp_path):
    model, tok, val = _model(request.getfixturevalue(arch), intent_data, tmp_path, trained=True)
    want = _unmerged_logits(model, val, tok.pad_token_id)
    got = predict_logits(model, val, 3, tok.pad_token_id, CPU, False)
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


def test_merge_is_undone_exactly_and_training_is_untouched(tiny_bert, intent_data, tmp_path):
    model, tok, val = _model(tiny_bert, intent_data, tmp_path, trained=True)
    layers = _lora_layers(model)
    assert len(layers) == 8  # q, v, ffn in, ffn out in 2 layers
    weights = {id(m): (m.base_layer.weight, m.base_layer.weight.data.data_ptr(), m.base_layer.weight.detach().clone())
               for m in layers}
    batch = collate(val.ids[:4], tok.pad_token_id, CPU)
    torch.manual_seed(1)
    before = model(**batch).logits.detach()  # train mode: LoRA dropout and all
    with merged_for_eval(model):
        assert all(m.disable_adapters for m in layers)
        changed = [not torch.equal(m.base_layer.weight, weights[id(m)][2]) for m in layers]
        assert all(changed)  # every layer's B is non-zero: every weight is merged
    predict_logits(model, val, 3, tok.pad_token_id, CPU, False)
    assert model.training
    for m in layers:
        w, ptr, value = weights[id(m)]
        assert not m.disable_adapters and not m.merged
        assert m.base_layer.weight is w and w.data_ptr() == ptr and torch.equal(w, value)
    torch.manual_seed(1)
    torch.testing.assert_close(model(**batch).logits.detach(), before, atol=0, rtol=0)


def test_zero_b_layers_are_switched_off_not_merged(tiny_bert, intent_data, tmp_path):
    model, tok, _ = _model(tiny_bert, intent_data, tmp_path, trained=False)
    layers = _lora_layers(model)
    values = [m.base_layer.weight.detach().clone() for m in layers]
    with merged_for_eval(model):
        assert all(m.disable_adapters for m in layers)
        assert all(torch.equal(m.base_layer.weight, v) for m, v in zip(layers, values))
    assert not any(m.disable_adapters for m in layers)


def test_over_the_byte_cap_the_adapters_run_unmerged(tiny_bert, intent_data, tmp_path, monkeypatch):
    model, tok, val = _model(tiny_bert, intent_data, tmp_path, trained=True)
    monkeypatch.setattr(adapt, "EVAL_MERGE_MAX_BYTES", 0)
    with merged_for_eval(model):
        assert not any(m.disable_adapters for m in _lora_layers(model))
    np.testing.assert_array_equal(predict_logits(model, val, 3, tok.pad_token_id, CPU, False),
                                  _unmerged_logits(model, val, tok.pad_token_id))


def test_dora_and_full_fine_tuning_pass_through(tiny_bert, intent_data, tmp_path):
    dora, _, _ = _model(tiny_bert, intent_data, tmp_path, trained=True, use_dora=True)
    full, _, _ = _model(tiny_bert, intent_data, tmp_path, trained=True, method="full")
    for model in (dora, full):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with merged_for_eval(model):
            assert not any(m.disable_adapters for m in _lora_layers(model))
            assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("one_thread", [True, False])
def test_thread_pick_keeps_the_logits_and_restores_the_thread_count(one_thread, tiny_bert, intent_data, tmp_path,
                                                                    monkeypatch):
    model, tok, val = _model(tiny_bert, intent_data, tmp_path, trained=True)
    assert len(eval_batches(val.lengths, 3)) >= train_mod.EVAL_THREAD_PROBE_BATCHES  # the pass probes
    seen = []
    monkeypatch.setattr(train_mod, "faster_on_one_thread", lambda a, b: seen.append((a, b)) or one_thread)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fixed = predict_logits(model, val, 3, tok.pad_token_id, CPU, False, pick_threads=False)
        assert seen == []
        picked = predict_logits(model, val, 3, tok.pad_token_id, CPU, False, pick_threads=True)
        assert len(seen) == 1 and all(s > 0 for s in seen[0])  # seconds per padded token, both ways
        assert train_mod._EVAL_ONE_THREAD["last"] is one_thread
        assert torch.get_num_threads() == 2
        short = predict_logits(model, val, 64, tok.pad_token_id, CPU, False, pick_threads=True)  # one batch: no probe
        assert len(seen) == 1 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
        train_mod._EVAL_ONE_THREAD["last"] = False
    np.testing.assert_array_equal(picked, fixed)
    np.testing.assert_allclose(short, fixed, atol=1e-6 * np.abs(fixed).max(), rtol=0)


def test_one_thread_only_when_clearly_faster():
    assert faster_on_one_thread(1.0, 0.5)
    assert faster_on_one_thread(1.0, 0.79)
    assert not faster_on_one_thread(1.0, 0.8)  # within timing noise of the cores: keep them
    assert not faster_on_one_thread(1.0, 1.5)


def test_a_texts_logits_do_not_depend_on_the_texts_scored_beside_it_under_bf16(tiny_bert, intent_data, tmp_path):
    """Under bf16 autocast a text's logits move with its padded length: padded to its batch's longest, a text's label
    could change with the other texts of the call (padding 10 -> 23 columns moved logits by 0.01). Each text is
    padded to its own padded_length, so alone or beside a long text it scores the same."""
    from loratune.data import Split
    from loratune.train import subset

    model, tok, val = _model(tiny_bert, intent_data, tmp_path, trained=True, max_length=32)
    space = api.prepare(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "r"))).label_space
    long = encode(tok, Split("x", ("please " * 12 + "lost my card " * 3,), ((space.labels[0],),), "x"), space, 32)
    assert long.lengths[0] > val.lengths.max() + 8  # a neighbour far longer than any val text
    both = subset(val, range(len(val.ids)))
    both.ids.append(long.ids[0])  # every val text, then the long one: one call
    pad = tok.pad_token_id
    alone = np.concatenate([predict_logits(model, subset(val, [i]), 3, pad, CPU, True) for i in range(len(val.ids))])
    beside = predict_logits(model, both, 64, pad, CPU, True)[:-1]
    assert np.abs(alone).max() > 0.01
    np.testing.assert_allclose(beside, alone, rtol=0, atol=1e-5)
    assert (beside.argmax(1) == alone.argmax(1)).all()
    # the padded length is the text's own: its tokens rounded up to the bucket, never past the truncation length
    from loratune.train import EVAL_PAD_BUCKET, padded_length

    assert [padded_length(n, 32) for n in (1, 8, 9, 31, 32)] == [8, 8, 16, 32, 32]
    assert padded_length(30, 30) == 30 and padded_length(5, None) == EVAL_PAD_BUCKET
