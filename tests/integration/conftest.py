"""Fixtures: tiny random-init models and a toy intent dataset (see support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import _save_tokenizer, make_rows, write_jsonl


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128,
                     initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    import torch
    from transformers import LlamaConfig, LlamaModel

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=None, bos_token_id=2, eos_token_id=3, initializer_range=0.2)
    LlamaModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, str]:
    """Tiny random-init RoBERTa and DistilBERT (3 layers), sharing the test tokenizer."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel, RobertaConfig, RobertaModel

    out = {}
    for name, build in {
        "roberta": lambda v: RobertaModel(RobertaConfig(vocab_size=v, hidden_size=32, num_hidden_layers=3,
                                                        num_attention_heads=2, intermediate_size=64,
                                                        max_position_embeddings=130, pad_token_id=0, initializer_range=0.2,
                                                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)),
        "distilbert": lambda v: DistilBertModel(DistilBertConfig(vocab_size=v, dim=32, n_layers=3, n_heads=2,
                                                                 hidden_dim=64, dropout=0.0, attention_dropout=0.0,
                                                                 pad_token_id=0, initializer_range=0.2)),
    }.items():
        folder = tmp_path_factory.mktemp(f"tiny-{name}")
        tok = _save_tokenizer(folder)
        torch.manual_seed(0)
        build(len(tok)).save_pretrained(folder)
        out[name] = str(folder)
    return out


@pytest.fixture(scope="session")
def intent_data(tmp_path_factory) -> Path:
    """train (12/label), validation (5/label), test (5/label) of a 4-intent toy task."""
    folder = tmp_path_factory.mktemp("intents")
    write_jsonl(folder / "train.jsonl", make_rows(12, seed=1))
    write_jsonl(folder / "validation.jsonl", make_rows(5, seed=2))
    write_jsonl(folder / "test.jsonl", make_rows(5, seed=3))
    return folder


@pytest.fixture(scope="session")
def lm(tmp_path_factory) -> str:
    """A tiny random-init Llama causal LM without a chat template (sft_support.save_tiny_llama_lm)."""
    from sft_support import save_tiny_llama_lm

    return save_tiny_llama_lm(tmp_path_factory.mktemp("tiny-llama-lm"), chat_template=False)
