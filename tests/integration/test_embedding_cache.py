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



# run with HF_HOME set (huggingface_hub and transformers read it at import): argv = the HF cache's hub folder, the
# first and the second revision's model folders, the embeddings cache
_HUB_SCRIPT = r"""
import hashlib, json, os, shutil, sys
from pathlib import Path
from loratune import api
from loratune.embeddings import embed_texts
repo, first, second, cache = Path(sys.argv[1]) / "models--org--tiny", sys.argv[2], sys.argv[3], sys.argv[4]

def snapshot(src, sha):  # as huggingface_hub lays a download out: blobs, links in snapshots/<commit>, refs/main
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in Path(src).iterdir():
        h = hashlib.sha256(f.read_bytes()).hexdigest()
        if not (repo / "blobs" / h).exists():
            shutil.copy(f, repo / "blobs" / h)
        os.symlink(f"../../blobs/{h}", snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)

cfg = api.load_config(None, ["name_or_path=org/tiny", "max_length=16"]).model
out = []
def embed(where):
    (emb,), cached, _ = embed_texts(cfg, [["lost my card please", "check account balance"]], cache_dir=where)
    out.append((emb.tolist(), cached))
snapshot(first, "a" * 40)
embed(cache)
embed(cache)
snapshot(second, "b" * 40)  # a new revision downloaded: refs/main moved
embed(cache)
embed(False)
print(json.dumps(out))
"""


def test_a_new_hub_revision_in_the_hf_cache_is_not_served_from_the_cache(tiny_bert, tmp_path):
    # a hub id (model.name_or_path=org/tiny) read offline from the Hugging Face cache: keyed on the id alone, the
    # embeddings of the revision cached first were served after refs/main moved to a new one
    import subprocess
    import sys

    import torch
    from transformers import BertModel

    other = BertModel.from_pretrained(tiny_bert)
    torch.manual_seed(5)
    for p in other.parameters():
        p.data.normal_(0, 0.2)
    shutil.copytree(tiny_bert, tmp_path / "other")
    other.save_pretrained(tmp_path / "other")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    res = subprocess.run([sys.executable, "-c", _HUB_SCRIPT, str(tmp_path / "hf" / "hub"), tiny_bert,
                          str(tmp_path / "other"), str(tmp_path / "cache")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    (first, c1), (again, c2), (after, c3), (fresh, _) = [(np.array(e), c) for e, c in
                                                         json.loads(res.stdout.strip().splitlines()[-1])]
    assert (c1, c2) == (False, True) and np.allclose(again, first)  # the same revision: from the cache
    assert not c3 and np.allclose(after, fresh) and not np.allclose(after, first)
