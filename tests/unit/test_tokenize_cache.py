"""The in-process tokenization cache (train.tokenize) keys each list of texts on its texts, never on their join: a
probe-set text holding a NUL read two validation texts' token ids (and the probe scored another split's rows)."""

from __future__ import annotations

from loratune.train import tokenize
from support import _save_tokenizer


def test_texts_holding_the_old_separator_get_their_own_ids(tmp_path):
    tok = _save_tokenizer(tmp_path)
    tokenize(tok, ["warm up"], 16)  # the first call sets the backend's truncation, part of the key's definition
    two = tokenize(tok, ["lost my card", "what is my balance"], 16)
    one = tokenize(tok, ["lost my card\x00what is my balance"], 16)
    assert len(two) == 2 and len(one) == 1
    assert one == tok(["lost my card\x00what is my balance"], truncation=True, max_length=16)["input_ids"]

