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



def test_tokenize_asks_for_input_ids_only_a_chunk_of_texts_at_a_time(tmp_path, monkeypatch):
    """The whole split's BatchEncoding (attention masks, token type ids, the fast tokenizer's Encodings) was built and
    thrown away: ~9 KB a row, 2.4 GB at 200k rows. Now input_ids alone, TOKENIZE_CHUNK texts per call, same ids."""
    from loratune import train

    tok = _save_tokenizer(tmp_path)
    texts = [f"lost my card {i} " + "pin " * (i % 7) for i in range(23)]
    expected = tok(texts, truncation=True, max_length=8)["input_ids"]
    calls = []

    class Spy:  # the tokenizer, its calls recorded
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, batch, **kw):
            got = tok(batch, **kw)
            calls.append((len(batch), sorted(got.keys())))
            return got

    monkeypatch.setattr(train, "TOKENIZE_CHUNK", 10, raising=False)
    assert tokenize(Spy(), texts, 8) == expected
    assert calls == [(10, ["input_ids"]), (10, ["input_ids"]), (3, ["input_ids"])]
