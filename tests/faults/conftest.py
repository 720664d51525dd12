"""Fixtures for the fault-injection suite: the tiny random-init BERT and the toy intents (support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import _save_tokenizer, make_rows, overrides, write_jsonl


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("faults-bert")
    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, initializer_range=0.2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def intent_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults-intents")
    write_jsonl(folder / "train.jsonl", make_rows(12, seed=1))
    write_jsonl(folder / "validation.jsonl", make_rows(5, seed=2))
    write_jsonl(folder / "test.jsonl", make_rows(5, seed=3))
    return folder


@pytest.fixture(scope="module")
def trained(tiny_bert, intent_data, tmp_path_factory, request) -> Path:
    """One finished tiny run per test module, for the tests that damage or misuse what a run leaves behind."""
    from loratune.cli import main

    out = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 0
    return out


@pytest.fixture(autouse=True, scope="session")
def _optuna_logs_through_logging():
    """optuna's own stderr handler is bound to whatever sys.stderr is when optuna first logs: in a test with capsys, a
    stream closed after that test, so a later test's optuna INFO line ('A new study created in RDB', from Study.open)
    printed '--- Logging error --- Traceback' into that test's captured stderr (which order the tests ran in decided
    whether it happened). Its records go through logging's propagation instead, as any library's (pytest captures
    them)."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    yield
