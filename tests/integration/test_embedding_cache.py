"""The embeddings cache (assess's probe) is keyed on every file of the model folder: a changed tokenizer or replaced
weight shards gave the old model's embeddings from the cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from loratune import api
from loratune.embeddings import embed_texts

TEXTS = ["lost my card please", "check account balance"]


def _embed(folder: Path, cache: Path | bool):
    cfg = api.load_config(None, [f"name_or_path={folder}", "max_length=16"]).model
    (emb,), cached, _ = embed_texts(cfg, [TEXTS], cache_dir=cache)
    return emb, cached


def test_a_changed_tokenizer_is_not_served_from_the_cache(tiny_bert, tmp_path):
    model = Path(shutil.copytree(tiny_bert, tmp_path / "m"))
    before, cached = _embed(model, tmp_path / "cache")
    assert not cached
    assert _embed(model, tmp_path / "cache")[1]  # the same model and texts: from the cache
    tj = json.loads((model / "tokenizer.json").read_text())
    v = tj["model"]["vocab"]
    v["card"], v["balance"] = v["balance"], v["card"]  # other token ids for two words
    (model / "tokenizer.json").write_text(json.dumps(tj))
    after, cached = _embed(model, tmp_path / "cache")
    fresh, _ = _embed(model, False)
    assert not cached and np.allclose(after, fresh) and not np.allclose(after, before)


def test_replaced_weight_shards_are_not_served_from_the_cache(tiny_bert, tmp_path):
    import torch
    from transformers import BertModel

    model = Path(shutil.copytree(tiny_bert, tmp_path / "m"))
    for f in model.glob("model*.safetensors*"):
        f.unlink()
    BertModel.from_pretrained(tiny_bert).save_pretrained(model, max_shard_size="20KB")
    assert (model / "model.safetensors.index.json").is_file()
    before, cached = _embed(model, tmp_path / "cache")
    assert not cached and _embed(model, tmp_path / "cache")[1]
    other = BertModel.from_pretrained(tiny_bert)
    torch.manual_seed(5)
    for p in other.parameters():
        p.data.normal_(0, 0.2)
    other.save_pretrained(tmp_path / "other", max_shard_size="20KB")
    for f in os.listdir(tmp_path / "other"):  # a continued-pretraining checkpoint copied over the shards only
        if f.startswith("model"):
            shutil.copy(tmp_path / "other" / f, model / f)
    after, cached = _embed(model, tmp_path / "cache")
    fresh, _ = _embed(model, False)
    assert not cached and np.allclose(after, fresh) and not np.allclose(after, before)
