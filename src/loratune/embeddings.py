"""Frozen mean-pooled embeddings of texts under the base model, cached on disk.

Batches sorted by length, `model.max_length` tokens, torch inference mode; the cache is keyed by the
model, max_length and the texts. torch is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from loratune.config import ModelConfig, cache_root
from loratune.tokens import load_tokenizer_quiet

CACHE_VERSION = "1"


def default_cache_dir() -> Path:
    return cache_root() / "embeddings"


def _model_fingerprint(cfg: ModelConfig) -> str:
    from loratune.models import hub_snapshot, resolve_model

    src = resolve_model(cfg)
    parts = [CACHE_VERSION, "mean-pool", src.path, str(src.gguf_file), str(cfg.max_length)]
    # a hub id is fingerprinted by the cache snapshot it resolves to (the folder name is the revision's commit):
    # keyed on the id alone, a new revision in the cache (refs/main moved) still gave the old one's embeddings
    snap = hub_snapshot(src)
    p = snap if snap is not None else Path(src.path)
    parts.append(str(snap))
    # every file of the model folder: the weights in one file or in shards with their index, the config and the
    # tokenizer files (tokenizer.json, vocab.txt, merges.txt, ...): keyed on three of them, a changed tokenizer or
    # replaced shards gave the old model's embeddings from the cache. A GGUF file holds them all.
    names = [src.gguf_file] if src.gguf_file else sorted(f.name for f in p.iterdir()) if p.is_dir() else []
    for name in names:
        f = p / name
        if f.is_file():
            st = f.stat()
            parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def cache_key(cfg: ModelConfig, texts: Sequence[str]) -> str:
    h = hashlib.sha256(_model_fingerprint(cfg).encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


def _encode(cfg: ModelConfig, tokenizer, text_lists: list[Sequence[str]], batch_size: int,
            num_threads: int | None) -> tuple[list[np.ndarray], int]:
    """Embeddings for each list, and the torch thread count used."""
    import torch

    from loratune.models import load_encoder

    model = load_encoder(cfg, purpose="for the probe", fix="check model.name_or_path, or run `loratune assess --no-probe`")
    model.eval()
    accepts = _forward_args(model)

    def embed_batch(texts: Sequence[str]) -> np.ndarray:
        batch = tokenizer(list(texts), padding=True, truncation=True, max_length=cfg.max_length,
                          return_tensors="pt")
        batch = {k: v for k, v in batch.items() if k in accepts}
        h = model(**batch).last_hidden_state  # [batch, seq, hidden]
        mask = batch["attention_mask"].unsqueeze(-1).to(h.dtype)  # [batch, seq, 1]
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # mean over real tokens: [batch, hidden]
        return pooled.float().cpu().numpy()

    from loratune.train import torch_threads

    out = []
    with torch_threads(), torch.inference_mode():  # the count picked here ends with the encoding
        threads = num_threads or _pick_threads(embed_batch, text_lists, batch_size, torch.get_num_threads())
        torch.set_num_threads(threads)
        for texts in text_lists:
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
            emb = None
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                pooled = embed_batch([texts[i] for i in idx])
                if emb is None:
                    emb = np.zeros((len(texts), pooled.shape[-1]), np.float32)
                emb[idx] = pooled
            out.append(emb if emb is not None else np.zeros((0, 1), np.float32))
    return out, threads


def _pick_threads(embed_batch, text_lists, batch_size: int, available: int) -> int:
    """On a shared machine all-core torch can be several times slower than one thread (the cores are
    busy and OpenMP workers wait on each other). Time one batch both ways and keep the faster."""
    import torch

    texts = [t for lst in text_lists for t in lst]
    if available <= 1 or len(texts) < 8 * batch_size:
        return max(1, available)
    sample = sorted(texts, key=len)[len(texts) // 2:][:batch_size]  # a typical batch
    times = {}
    for n in (available, 1, available):  # the first call also warms up
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        embed_batch(sample)
        times[n] = time.perf_counter() - t0
    from loratune.train import faster_on_one_thread

    return 1 if faster_on_one_thread(times[available], times[1]) else available


def _forward_args(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def embed_texts(cfg: ModelConfig, text_lists: Sequence[Sequence[str]], *, tokenizer=None,
                cache_dir: str | Path | None | bool = None, batch_size: int = 128,
                num_threads: int | None = None) -> tuple[list[np.ndarray], bool, int | None]:
    """Mean-pooled frozen embeddings [n, hidden] (float32) for each list of texts, whether all came
    from the cache, and the torch threads used (None when nothing was computed).

    cache_dir: None -> default_cache_dir(); False -> no cache. num_threads None: the faster of all
    cores and one (timed on one batch; a shared machine often favours one).
    """
    folder = None if cache_dir is False else Path(cache_dir) if cache_dir else default_cache_dir()
    keys = [cache_key(cfg, texts) for texts in text_lists]
    result: list[np.ndarray | None] = [None] * len(text_lists)
    if folder is not None:
        for i, k in enumerate(keys):
            f = folder / f"{k}.npy"
            if f.is_file():
                try:
                    arr = np.load(f)
                    if arr.shape[0] == len(text_lists[i]):
                        result[i] = arr
                except (OSError, ValueError):
                    pass  # a damaged cache file: recompute
    missing = [i for i, r in enumerate(result) if r is None]
    threads = None
    if missing:
        if tokenizer is None:
            tokenizer = load_tokenizer_quiet(cfg)
        fresh, threads = _encode(cfg, tokenizer, [text_lists[i] for i in missing], batch_size, num_threads)
        for i, arr in zip(missing, fresh):
            result[i] = arr
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{keys[i]}.{os.getpid()}.tmp.npy"
                np.save(tmp, arr)
                os.replace(tmp, folder / f"{keys[i]}.npy")  # atomic
    return [r for r in result], not missing, threads  # type: ignore[misc]
