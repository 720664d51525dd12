"""Tokenisation helpers for profiling data: the tokenizer loaded quietly, and token lengths per text."""

from __future__ import annotations

from typing import Sequence

from loratune.config import ModelConfig
from loratune.models import quiet_transformers


def load_tokenizer_quiet(cfg: ModelConfig):
    from loratune.models import load_tokenizer

    with quiet_transformers():
        return load_tokenizer(cfg)


def token_lengths(tokenizer, texts: Sequence[str]) -> tuple[list[int], int | None]:
    """Tokens per text (special tokens included, no truncation) and the count of unknown tokens."""
    if not texts:
        return [], 0
    with quiet_transformers():
        ids = tokenizer(list(texts), add_special_tokens=True, truncation=False,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk = sum(x.count(unk_id) for x in ids) if unk_id is not None else None
    return [len(x) for x in ids], unk
