"""A tokenizer whose pad token loratune cannot pad with (none at all, or one added without resizing the model's
embeddings) is a UserError before training starts, not a TypeError in collate or an IndexError mid-run."""

from __future__ import annotations

import json

import pytest

from loratune.cli import main

from support import _vocab, flat, overrides


def _word_tokenizer(words, **special):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, **special)


def _tiny_llama(folder, vocab_size):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                 bos_token_id=None, eos_token_id=None, pad_token_id=None)).save_pretrained(folder)


@pytest.fixture(scope="module")
def no_special(tmp_path_factory):
    """A word-level tokenizer declaring no special token at all (no pad, eos or unk) beside a tiny Llama."""
    folder = tmp_path_factory.mktemp("llama-nospecial")
    words = ["<unk>"] + _vocab()[5:]
    _word_tokenizer(words).save_pretrained(folder)
    _tiny_llama(folder, len(words))
    return str(folder)


@pytest.fixture(scope="module")
def pad_outside(tmp_path_factory):
    """A pad token added to the tokenizer (id = vocab size) without resizing the model's embeddings."""
    folder = tmp_path_factory.mktemp("llama-padoutside")
    words = ["<unk>", "<s>", "</s>"] + _vocab()[5:]
    tok = _word_tokenizer(words, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.add_special_tokens({"pad_token": "[PAD]"})
    assert tok.pad_token_id == len(words)
    tok.save_pretrained(folder)
    _tiny_llama(folder, len(words))
    return str(folder)


@pytest.mark.parametrize("dry", [True, False])
def test_a_tokenizer_with_no_pad_eos_or_unk_token_is_refused(dry, no_special, intent_data, tmp_path, capsys):
    args = ["train", "-q", *(["--dry-run"] if dry else []), *overrides(no_special, intent_data, tmp_path / "run")]
    assert main(args) == 2
    err = flat(capsys.readouterr().err)
    assert "no pad, eos or unk token" in err and "fix: give the tokenizer a pad token" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("dry", [True, False])
def test_a_pad_id_outside_the_embeddings_is_refused_before_training(dry, pad_outside, intent_data, tmp_path, capsys):
    n = len(_vocab()) - 5 + 3
    args = ["train", "-q", *(["--dry-run"] if dry else []), *overrides(pad_outside, intent_data, tmp_path / "run")]
    assert main(args) == 2
    err = flat(capsys.readouterr().err)
    assert f"pads with token id {n}, but the model's embeddings have {n} rows" in err
    assert "resize_token_embeddings" in err and "model's own tokenizer" in err
    run_json = tmp_path / "run" / "run.json"
    if run_json.exists():  # a record, if any, never says training ran
        assert json.loads(run_json.read_text())["status"] != "completed"


def test_a_causal_lm_refuses_a_pad_id_outside_its_embeddings_too(pad_outside):
    from loratune.config import ModelConfig
    from loratune.errors import UserError
    from loratune.models import load_causal_lm, load_tokenizer

    cfg = ModelConfig(name_or_path=pad_outside, task="causal-lm")
    with pytest.raises(UserError, match="pads with token id"):
        load_causal_lm(cfg, load_tokenizer(cfg).pad_token_id)
