"""Frozen-prefix cache: the cached forward equals the full forward; a cached run matches an uncached one."""

from __future__ import annotations

import json as _json
import math
import os
import time

import numpy as np
import pytest
import torch

from loratune import api, prefix_cache
from loratune.config import load_config
from loratune.models import load_tokenizer
from loratune.train import collate, encode, eval_batches, eval_collate, forward_logits, predict_logits

from support import overrides, talking_lora_classifier

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    prefix_cache.clear()
    yield
    prefix_cache.clear()


def _model_and_data(folder, data, tmp_path, **extra):
    cfg, dataset, tok, model = talking_lora_classifier(folder, data, tmp_path / "run", **extra)
    encs = [encode(tok, split, dataset.label_space, cfg.model.max_length)
            for split in (dataset.train, dataset.validation)]
    return cfg, model, tok, encs


def _attach(model, tok, encs, mode="auto", autocast=False):
    # as train.py attaches it: each text's states computed at its own padded length, as scoring pads it
    m = encs[0].max_length
    return prefix_cache.attach(model, mode, "lora", encs, lambda ids: eval_collate(ids, tok.pad_token_id, CPU, m),
                               lambda lengths: eval_batches(lengths, 5, m), autocast)


@pytest.mark.parametrize("arch,store", [("tiny_bert", np.float32), ("tiny_bert", np.float16),
                                        ("tiny_llama", np.float32), ("roberta", np.float32),
                                        ("distilbert", np.float32)])
def test_cached_logits_equal_full_forward(arch, store, request, tiny_encoders, intent_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prefix_cache, "STORE_DTYPE", store)
    folder = tiny_encoders[arch] if arch in tiny_encoders else request.getfixturevalue(arch)
    _, model, tok, encs = _model_and_data(folder, intent_data, tmp_path, layers_to_transform="top:1")
    full = [predict_logits(model, e, 7, tok.pad_token_id, CPU, False) for e in encs]
    note = _attach(model, tok, encs)
    assert note["used"] and note["first_layer"] >= 1, note
    cached = [predict_logits(model, e, 7, tok.pad_token_id, CPU, False) for e in encs]
    tol = 1e-5 if store is np.float32 else 2e-2
    for f, c in zip(full, cached):
        assert np.abs(f).max() > 0.1  # the comparison means something
        np.testing.assert_allclose(c, f, atol=tol * max(1.0, np.abs(f).max()), rtol=0)
    # the model is whole again outside a cached forward
    enc = encs[1]
    enc.prefix, saved = None, enc.prefix
    np.testing.assert_array_equal(predict_logits(model, enc, 7, tok.pad_token_id, CPU, False), full[1])
    enc.prefix = saved


def test_cached_training_forward_gives_the_same_gradients(tiny_bert, intent_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prefix_cache, "STORE_DTYPE", np.float32)
    _, model, tok, (train_enc, _) = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    rows = [0, 3, 5, 9]
    batch = collate([train_enc.ids[i] for i in rows], tok.pad_token_id, CPU)
    target = torch.from_numpy(train_enc.targets[rows])
    model.eval()  # no dropout: the two paths must agree exactly

    def grads():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward_logits(model, train_enc, rows, batch), target).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    full = grads()
    _attach(model, tok, [train_enc])
    cached = grads()
    assert set(full) == set(cached) and any("lora_A" in n for n in cached)
    assert all(".layer.0." not in n for n in cached)  # nothing below the first adapted block trains
    for n in full:
        torch.testing.assert_close(cached[n], full[n], atol=1e-5, rtol=1e-4)


def test_short_run_matches_uncached_run_and_reuses_the_cache(tiny_bert, intent_data, tmp_path):
    extra = {"layers_to_transform": "top:1", "max_steps": 8, "eval_steps": 4}
    off = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "off", prefix_cache="off",
                                                **extra)), progress=False)
    on = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "on", **extra)), progress=False)
    again = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "again", learning_rate=1e-2, **extra)),
                      progress=False)
    assert off["prefix_cache"] == {"used": False, "reason": "train.prefix_cache is off"}
    assert on["prefix_cache"]["used"] and on["prefix_cache"]["splits_built"] == 3
    # another trial on the same model, data and max_length (another lr) finds every split cached
    assert again["prefix_cache"]["splits_reused"] == 3 and again["prefix_cache"]["splits_built"] == 0
    assert on["steps_done"] == off["steps_done"] == 8
    # the fixture has no dropout, so only float16 rounding of the cached states separates the runs
    for key in ("val/loss", "train_eval/loss", "train/loss"):
        assert on["final"][key] == pytest.approx(off["final"][key], rel=2e-2, abs=2e-3), key
    assert abs(on["final"]["val/macro_f1"] - off["final"]["val/macro_f1"]) <= 0.1


@pytest.mark.parametrize("extra,reason", [
    ({}, "touches block 0"),  # attn.q + attn.v in every layer
    ({"layers_to_transform": "top:1", "bias": "all"}, "touches block 0"),  # biases below train too
    ({"method": "full"}, "trains every layer"),
])
def test_falls_back_when_the_bottom_trains(extra, reason, tiny_bert, intent_data, tmp_path):
    run = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=2, eval_steps=2,
                                                **extra)), progress=False)
    assert run["status"] == "completed"
    assert run["prefix_cache"]["used"] is False and reason in run["prefix_cache"]["reason"]


def test_unsupported_architecture_takes_the_normal_path(tiny_llama, intent_data, tmp_path, monkeypatch):
    monkeypatch.delitem(prefix_cache.SPLICE_TABLE, "llama")
    run = api.train(load_config(None, overrides(tiny_llama, intent_data, tmp_path / "run", max_steps=2, eval_steps=2,
                                                layers_to_transform="top:1")), progress=False)
    assert run["status"] == "completed"
    assert not run["prefix_cache"]["used"] and "'llama' is not supported" in run["prefix_cache"]["reason"]


def test_large_entries_go_to_disk_and_are_found_by_a_later_process(tiny_bert, intent_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    full = predict_logits(model, encs[1], 7, tok.pad_token_id, CPU, False)
    note = _attach(model, tok, encs)
    assert note["splits_on_disk"] == 2 and note["splits_built"] == 2
    files = sorted(p.name for p in (tmp_path / "cache" / "prefix").iterdir())
    assert len(files) == 4 and not any(".tmp" in f for f in files)
    prefix_cache.clear()  # a new process: nothing in memory
    again = _attach(model, tok, encs)
    assert again["splits_reused"] == 2 and again["splits_built"] == 0
    cached = predict_logits(model, encs[1], 7, tok.pad_token_id, CPU, False)
    np.testing.assert_allclose(cached, full, atol=2e-2 * np.abs(full).max(), rtol=0)


def test_a_damaged_or_mismatched_disk_entry_is_rebuilt_and_a_model_config_change_is_a_new_key(
        tiny_bert, intent_data, tmp_path, monkeypatch):
    """An empty values file raised EOFError in every later run; another entry's values raised IndexError; a model
    differing only in hidden_act reused the first model's states."""
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    _attach(model, tok, encs)
    folder = tmp_path / "cache" / "prefix"
    values = sorted(folder.glob("*.values.npy"))
    values[0].write_bytes(b"")  # empty
    values[1].write_bytes(np.lib.format.header_data_from_array_1_0(np.zeros((3, 2))) and b"")  # empty too
    np.save(values[1], np.zeros((3, 8), np.float16))  # a readable array with the wrong number of rows
    prefix_cache.clear()
    note = _attach(model, tok, encs)
    assert note["splits_reused"] == 0 and note["splits_built"] == 2
    prefix_cache.clear()
    assert _attach(model, tok, encs)["splits_reused"] == 2  # rebuilt whole
    prefix_cache.clear()
    model.config.hidden_act = "relu"  # same weights, other computation
    assert _attach(model, tok, encs)["splits_reused"] == 0


def test_an_unwritable_cache_folder_keeps_the_states_in_memory(tiny_bert, intent_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    note = _attach(model, tok, encs)
    assert note["splits_built"] == 2 and note["splits_on_disk"] == 0


def test_a_bad_memory_budget_is_said_and_the_default_kept(monkeypatch):
    monkeypatch.setenv("LORATUNE_PREFIX_CACHE_MB", "2GB")
    with pytest.warns(UserWarning, match="is not a number of megabytes"):
        assert prefix_cache._memory_budget_mb() == 1024.0
    monkeypatch.setenv("LORATUNE_PREFIX_CACHE_MB", "2048")
    assert prefix_cache._memory_budget_mb() == 2048.0


def test_an_interrupted_disk_build_leaves_no_temporary_file(tiny_bert, intent_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    calls = []

    def capture(self, batch, _orig=prefix_cache.Splice.capture):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return _orig(self, batch)

    monkeypatch.setattr(prefix_cache.Splice, "capture", capture)
    with pytest.raises(KeyboardInterrupt):
        _attach(model, tok, encs)
    assert not [p for p in (tmp_path / "cache" / "prefix").iterdir() if ".tmp" in p.name]


def test_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(prefix_cache, "MEMORY_BUDGET_MB", 1.0)
    entry = lambda: prefix_cache.PrefixStates(np.zeros((1000, 200), np.float16), np.array([0, 1000]))  # 0.4 MB
    for key in "abcd":
        prefix_cache._remember(key, entry())
    assert list(prefix_cache._MEMORY) == ["c", "d"]
    monkeypatch.setattr(prefix_cache, "MEMORY_BUDGET_MB", 0.1)  # an entry larger than the budget is not kept either
    prefix_cache._remember("e", entry())
    assert list(prefix_cache._MEMORY) == []


def test_padded_gathers_rows_and_zero_pads():
    values = np.arange(12, dtype=np.float16).reshape(6, 2)  # rows of 1, 3 and 2 tokens
    states = prefix_cache.PrefixStates(values, np.array([0, 1, 4, 6]))
    out = states.padded([2, 0], 3).numpy()
    assert out.shape == (2, 3, 2)
    np.testing.assert_array_equal(out[0], [[8, 9], [10, 11], [0, 0]])
    np.testing.assert_array_equal(out[1], [[0, 1], [0, 0], [0, 0]])


def test_tokenization_is_reused_across_runs(tiny_bert):
    from loratune import train as train_mod
    from loratune.config import ModelConfig

    texts = ["lost my card", "what is my balance today please"]
    tok_a = load_tokenizer(ModelConfig(name_or_path=tiny_bert))
    tok_b = load_tokenizer(ModelConfig(name_or_path=tiny_bert))  # a later trial loads its own tokenizer
    first = train_mod.tokenize(tok_a, texts, 16)
    assert train_mod.tokenize(tok_b, list(texts), 16) is first  # same definition, texts, max_length: reused
    short = train_mod.tokenize(tok_b, texts, 4)
    assert short is not first and max(len(x) for x in short) == 4
    assert first == tok_a(texts, truncation=True, max_length=16)["input_ids"]


def test_put_scatters_a_padded_batch_into_its_rows_and_padded_gathers_it_back():
    offsets = np.array([0, 3, 4, 9])  # rows of 3, 1 and 5 tokens
    states = prefix_cache.PrefixStates(np.zeros((9, 2), dtype=np.float16), offsets, ready=np.zeros(3, dtype=bool))
    batch = np.arange(1, 21, dtype=np.float16).reshape(2, 5, 2)  # rows 2 (5 tokens) and 0 (3 tokens, 2 padded)
    states.put([2, 0], batch)
    assert states.missing([0, 1, 2]).tolist() == [1]
    np.testing.assert_array_equal(states.values[4:9], batch[0])
    np.testing.assert_array_equal(states.values[0:3], batch[1, :3])
    assert (states.values[3] == 0).all()  # row 1 is untouched
    back = states.padded([2, 0], 5).numpy()
    np.testing.assert_array_equal(back[0], batch[0])
    np.testing.assert_array_equal(back[1, :3], batch[1, :3])
    assert (back[1, 3:] == 0).all()  # padding comes back as zeros, not as what the batch held there


def test_under_bf16_the_states_are_computed_in_bf16_and_the_prefix_holds_bf16_weights(tiny_bert, intent_data,
                                                                                        tmp_path, monkeypatch):
    """A bf16 run computes the cached states under autocast however the caller got there (the up-front build runs
    outside autocast), so the prefix's frozen linear layers hold bf16 weights like the rest of the body and the
    cached forward gives the uncached one's logits; the key names the precision, so a float32 run never reads
    states computed in bf16."""
    from loratune import precision as precision_mod
    from loratune.heads import head_modules

    monkeypatch.setattr(prefix_cache, "STORE_DTYPE", np.float32)
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    full = [predict_logits(model, e, 7, tok.pad_token_id, CPU, True) for e in encs]
    lazy = _attach(model, tok, encs, autocast=True)
    assert lazy["computed_in"] == "bf16" and lazy["splits_built"] == 2
    assert precision_mod.frozen_weights_in_bf16(model, head_modules(model)) == 12  # both blocks' six linear layers
    query0 = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert query0.weight.dtype == torch.bfloat16  # block 0 is the cached prefix
    cached = [predict_logits(model, e, 7, tok.pad_token_id, CPU, True) for e in encs]
    for f, c in zip(full, cached):
        assert np.abs(f).max() > 0.1
        np.testing.assert_allclose(c, f, atol=1e-6 * np.abs(f).max(), rtol=0)
    # a float32 run of the same weights and data (the same hash) meets those entries in memory and does not read them
    _, model32, tok, encs32 = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    fp32 = _attach(model32, tok, encs32)
    assert fp32["computed_in"] == "fp32" and fp32["splits_reused"] == 0 and fp32["splits_built"] == 2
    again = _attach(model32, tok, encs32, autocast=True)
    assert again["splits_reused"] == 2  # a bf16 run of them does
    # built up front (an entry bound for disk), outside any autocast, by the model holding bf16 weights
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    prefix_cache.clear()
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache-eager"))
    eager = _attach(model, tok, encs, autocast=True)
    assert eager["splits_on_disk"] == 2 and eager["computed_in"] == "bf16"
    for f, e in zip(full, encs):
        np.testing.assert_allclose(predict_logits(model, e, 7, tok.pad_token_id, CPU, True), f,
                                   atol=1e-6 * np.abs(f).max(), rtol=0)


def test_a_bf16_run_records_its_states_computed_in_bf16(tiny_bert, intent_data, tmp_path):
    run = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", precision="bf16", max_steps=3,
                                                eval_steps=3, layers_to_transform="top:1")), progress=False)
    assert run["status"] == "completed" and math.isfinite(run["final"]["val/loss"])
    assert run["prefix_cache"]["used"] and run["prefix_cache"]["computed_in"] == "bf16"
    assert run["precision"]["frozen_linear_bf16"] == 12  # the cached block 0's six layers too
    assert run["prefix_cache"]["lazy"]["rows_computed"] > 0


# ----------------------------------------------------------------------------------------------
# faults in the cache: the run goes on without it, says so once, and its result is the uncached run's


def _temporaries(tmp_path) -> list[str]:
    folder = tmp_path / "cache" / "prefix"
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name) if folder.is_dir() else []


@pytest.mark.parametrize("where", ["reserve", "create"])
def test_a_full_disk_runs_uncached_with_the_reason_recorded_and_no_temporary_file(where, tiny_bert, intent_data,
                                                                                  tmp_path, monkeypatch, capsys):
    """A full cache disk killed `train` with SIGBUS (the memory-mapped temporary file was sparse: its page writes
    fault with no free block): no message, no run record, the temporary file left. The space is reserved first now,
    and a refusal there (or at the file's creation) is an uncached run."""
    import errno
    import json

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    extra = {"layers_to_transform": "top:1", "max_steps": 6, "eval_steps": 3}
    off = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "off", prefix_cache="off",
                                                **extra)), progress=False)
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    if where == "reserve":  # the file is created (sparse), its blocks cannot be had
        monkeypatch.setattr(prefix_cache, "reserve", full, raising=False)
    else:
        monkeypatch.setattr(np.lib.format, "open_memmap", full)
    capsys.readouterr()
    run = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", **extra)), progress=False)
    assert run["status"] == "completed" and run["steps_done"] == 6
    note = run["prefix_cache"]
    assert note["used"] is False and "No space left on device" in note["reason"], note
    assert "LORATUNE_CACHE_DIR" in note["reason"]  # the way out
    assert json.loads((tmp_path / "run" / "run.json").read_text())["prefix_cache"] == note
    assert capsys.readouterr().err.count("prefix cache not used") == 1
    assert _temporaries(tmp_path) == []
    assert not list((tmp_path / "cache" / "prefix").glob("*.values.npy"))
    # the plain forward throughout: the uncached run's numbers
    for key in ("val/loss", "train_eval/loss", "train/loss", "val/macro_f1"):
        assert run["final"][key] == off["final"][key], key


def test_temporary_files_of_dead_writers_are_removed_and_a_live_writers_kept(tiny_bert, intent_data, tmp_path):
    """A build killed mid-way (kill -9, a bus error) left its full-size temporary file for good."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid names no process now
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "cache" / "prefix"
        folder.mkdir(parents=True)
        here, foreign = prefix_cache._namespace_tag(), "f" * 12
        old = time.time() - prefix_cache.FOREIGN_TEMPORARY_AGE_S - 60
        names = {"stale_values": f"{'a' * 32}.values.npy.tmp-{here}-{dead.pid}",
                 "stale_offsets": f"{'a' * 32}.offsets.npy.tmp-{here}-{dead.pid}.npy",
                 "live": f"{'b' * 32}.values.npy.tmp-{here}-{live.pid}",
                 "mine": f"{'c' * 32}.values.npy.tmp-{here}-{os.getpid()}",
                 "entry": f"{'d' * 32}.values.npy",
                 # another PID namespace's or host's writer: its pid means nothing here, so only its age counts
                 "foreign": f"{'e' * 32}.values.npy.tmp-{foreign}-{dead.pid}",
                 "foreign_old": f"{'e' * 32}.offsets.npy.tmp-{foreign}-{dead.pid}.npy",
                 "untagged": f"{'f' * 32}.values.npy.tmp-{dead.pid}",  # an older loratune's name: whose, unknown
                 "untagged_old": f"{'0' * 32}.values.npy.tmp-{dead.pid}"}
        for name in names.values():
            (folder / name).write_bytes(b"x" * 64)
        for name in ("foreign_old", "untagged_old"):
            os.utime(folder / names[name], (old, old))
        _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
        assert _attach(model, tok, encs)["used"]
        left = {p.name for p in folder.iterdir()}
        assert left == {names[n] for n in ("live", "mine", "entry", "foreign", "untagged")}
    finally:
        live.kill()
        live.wait()


def _damage_width(f):
    v = np.load(f)
    np.save(f, np.zeros((v.shape[0], 16), dtype=v.dtype))  # the same rows, half the hidden size


def _damage_nan(f):
    v = np.load(f, mmap_mode="r+")
    v[3:5] = np.nan
    v.flush()
    del v


def _damage_dtype(f):
    np.save(f, np.load(f).astype(np.float32))  # the right values, not the store's dtype


def _damage_offsets(f):
    o = np.load(f)
    o[1:-1] = o[-1] // 2  # the total right, the rows wrong
    np.save(f, o)


@pytest.mark.parametrize("damage,suffix", [(_damage_width, "values"), (_damage_nan, "values"),
                                           (_damage_dtype, "values"), (_damage_offsets, "offsets")])
def test_a_disk_entry_that_does_not_hold_its_splits_states_is_rebuilt(damage, suffix, tiny_bert, intent_data,
                                                                     tmp_path, monkeypatch):
    """A values file of the right rows and the wrong width was used (a shape error, exit 1); one holding NaN was used
    too (the run 'diverged', a record blaming training for a cache fault)."""
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    full = [predict_logits(model, e, 7, tok.pad_token_id, CPU, False) for e in encs]
    assert _attach(model, tok, encs)["splits_built"] == 2
    for f in (tmp_path / "cache" / "prefix").glob(f"*.{suffix}.npy"):
        damage(f)
    prefix_cache.clear()  # a later process
    note = _attach(model, tok, encs)
    assert note["used"] and note["splits_reused"] == 0 and note["splits_built"] == 2, note
    for f, e in zip(full, encs):
        np.testing.assert_allclose(predict_logits(model, e, 7, tok.pad_token_id, CPU, False), f,
                                   atol=2e-2 * np.abs(f).max(), rtol=0)
    prefix_cache.clear()
    assert _attach(model, tok, encs)["splits_reused"] == 2  # rebuilt sound


def _loud_llama(tiny_llama, tmp_path) -> str:
    """tiny_llama with its embeddings scaled by 2e5: a residual stream beyond float16's 65504, which RMSNorm makes
    harmless to the plain forward."""
    import shutil

    from transformers import LlamaModel

    folder = tmp_path / "loud-llama"
    shutil.copytree(tiny_llama, folder)
    model = LlamaModel.from_pretrained(tiny_llama)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(2e5)
    model.save_pretrained(folder)
    return str(folder)


def test_states_float16_cannot_hold_are_not_cached_and_the_run_is_the_uncached_one(tiny_llama, intent_data,
                                                                                   tmp_path, capsys):
    """Cached states rounded to float16 turned into inf, and a healthy run into 'diverged: non-finite loss'."""
    loud = _loud_llama(tiny_llama, tmp_path)
    extra = {"layers_to_transform": "top:1", "max_steps": 6, "eval_steps": 3, "learning_rate": 2e-2}
    off = api.train(load_config(None, overrides(loud, intent_data, tmp_path / "off", prefix_cache="off", **extra)),
                    progress=False)
    assert off["status"] == "completed"
    capsys.readouterr()
    run = api.train(load_config(None, overrides(loud, intent_data, tmp_path / "on", **extra)), progress=False)
    assert run["status"] == "completed", run.get("error")
    note = run["prefix_cache"]
    assert note["used"] is False and "not finite in float16" in note["reason"], note
    assert capsys.readouterr().err.count("prefix cache not used") == 1
    for key in ("val/loss", "train_eval/loss", "train/loss", "val/macro_f1"):
        assert math.isfinite(run["final"][key]) and run["final"][key] == off["final"][key], key


def test_states_float16_cannot_hold_leave_no_disk_entry(tiny_llama, intent_data, tmp_path, monkeypatch):
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    _, model, tok, encs = _model_and_data(_loud_llama(tiny_llama, tmp_path), intent_data, tmp_path,
                                          layers_to_transform="top:1")
    full = predict_logits(model, encs[1], 7, tok.pad_token_id, CPU, False)
    note = _attach(model, tok, encs)
    assert note["used"] is False and "not finite in float16" in note["reason"], note
    assert all(e.prefix is None for e in encs)
    assert _temporaries(tmp_path) == [] and not list((tmp_path / "cache" / "prefix").glob("*.values.npy"))
    np.testing.assert_array_equal(predict_logits(model, encs[1], 7, tok.pad_token_id, CPU, False), full)


def test_states_built_under_another_padding_are_not_reused(tiny_bert, intent_data, tmp_path, monkeypatch):
    """Entries computed before scoring padded each text to its own length (batch-longest padding) were reused
    after it, though a row's states move with its padded width at bf16 rounding: the padding is part of the key."""
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    m = encs[0].max_length

    def attach(layout):
        return prefix_cache.attach(model, "auto", "lora", encs, lambda ids: eval_collate(ids, tok.pad_token_id, CPU, m),
                                   lambda lengths: eval_batches(lengths, 5, m), False, layout=layout)

    assert attach("batch-longest")["splits_built"] == 2
    assert attach("padded_length/8")["splits_reused"] == 0
    assert attach("padded_length/8")["splits_reused"] == 2
    # train.py keys its entries by the padding it scores with
    extra = {"layers_to_transform": "top:1", "max_steps": 2, "eval_steps": 2}
    first = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "a", **extra)), progress=False)
    assert first["prefix_cache"]["splits_built"] == 3
    import loratune.train as train_mod
    monkeypatch.setattr(train_mod, "scoring_layout", lambda max_length: f"padded_length/16/max_length/{max_length}")
    other = api.train(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "b", **extra)), progress=False)
    assert other["prefix_cache"]["splits_reused"] == 0 and other["prefix_cache"]["splits_built"] == 3


def _entries() -> dict:
    """key -> (the rows computed so far, the states of each: a lazy entry's other rows hold nothing yet)."""
    out = {}
    for key, s in prefix_cache._MEMORY.items():
        ready = np.ones(len(s.offsets) - 1, bool) if s.ready is None else s.ready.copy()
        out[key] = ready, [np.array(s.values[s.offsets[i]:s.offsets[i + 1]]) if ready[i] else None
                           for i in range(len(ready))]
    return out


def test_a_lazy_entry_holds_the_same_states_whichever_run_filled_it(tiny_bert, intent_data, tmp_path):
    """A lazily filled row's states were computed in the training batch that first reached it, padded to that mixed
    batch's longest row: the same run's numbers changed with the batch size of the run that filled the entry before
    it (train/loss 1.3290038 cold, 1.3290963 after a run of batches of 32). Each row is computed at its own padded
    length now (the scoring batches), so an entry's contents follow from its key alone."""
    extra = {"layers_to_transform": "top:1", "max_steps": 6, "eval_steps": 3}

    def run(name, batch, **more):
        cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / name, per_device_train_batch_size=batch,
                                          **extra, **more))
        return api.train(cfg, progress=False)

    cold = run("cold", 4)
    cold_entries = _entries()
    prefix_cache.clear()
    run("before", 32)  # fills the entries in batches of 32
    warm = run("warm", 4)
    assert _entries().keys() == cold_entries.keys() and len(cold_entries) == 3
    compared = 0
    for key, (ready, rows) in cold_entries.items():
        ready_warm, rows_warm = _entries()[key]
        for i in np.flatnonzero(ready & ready_warm):
            np.testing.assert_array_equal(rows_warm[i], rows[i])
            compared += 1
    assert compared >= 40
    assert cold["prefix_cache"]["splits_built"] == 3 and warm["prefix_cache"]["splits_reused"] == 3
    assert warm["prefix_cache"]["lazy"]["rows_computed"] == 0
    for key in ("train/loss", "val/loss", "train_eval/loss"):
        assert warm["final"][key] == cold["final"][key], key


def test_states_of_another_max_length_are_not_reused(tiny_bert, intent_data, tmp_path):
    """max_length caps a row's padded width, so with the same token ids (nothing truncated) a run under another
    max_length scores each row in other columns: its entries were reused (step-0 val/loss 1.48275 cold, 1.48313
    after a max_length=12 run). The key holds everything padded_length reads now."""
    tok = load_tokenizer(load_config(None, overrides(tiny_bert, intent_data, tmp_path / "t")).model)
    texts = [_json.loads(line)["text"] for name in ("train", "validation")
             for line in (intent_data / f"{name}.jsonl").read_text().splitlines()]
    longest = max(len(tok(t)["input_ids"]) for t in texts)
    assert longest % 8, longest  # a cap at `longest` pads the longest rows to fewer columns than the bucket does
    extra = {"layers_to_transform": "top:1", "max_steps": 2, "eval_steps": 2}

    def run(name, max_length):
        cfg = load_config(None, overrides(tiny_bert, intent_data, tmp_path / name, max_length=max_length, **extra))
        r = api.train(cfg, progress=False)
        return r, _json.loads((tmp_path / name / "history.jsonl").read_text().splitlines()[0])["val/loss"]

    cold, cold_loss = run("cold", 64)
    prefix_cache.clear()
    capped, _ = run("capped", longest)
    assert capped["prefix_cache"]["splits_built"] == 3
    warm, warm_loss = run("warm", 64)
    assert warm["prefix_cache"]["splits_reused"] == 0 and warm["prefix_cache"]["splits_built"] == 3
    assert warm_loss == cold_loss and warm["final"]["val/loss"] == cold["final"]["val/loss"]
    assert run("again", 64)[0]["prefix_cache"]["splits_reused"] == 3


def _cleaned_mid_build(monkeypatch, cleanup) -> list:
    """Run `cleanup()` once while a disk entry's temporary file is being written (its second batch)."""
    calls, seen = [], []

    def capture(self, batch, _orig=prefix_cache.Splice.capture):
        calls.append(1)
        if len(calls) == 2:
            seen.append(cleanup())
        return _orig(self, batch)

    monkeypatch.setattr(prefix_cache.Splice, "capture", capture)
    return seen


def test_a_cleanup_from_another_pid_namespace_leaves_a_live_build_alone(tiny_bert, intent_data, tmp_path, monkeypatch):
    """A process in another PID namespace sharing the cache folder (a container with it mounted, an NFS home) probed
    the writer's pid in its own namespace, found no such process and deleted the live build's file: the build's rename
    then failed and the run went uncached, saying its disk was full."""
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    folder = tmp_path / "cache" / "prefix"

    def from_another_namespace():
        def no_such_process(pid, sig):
            raise ProcessLookupError(pid)

        with monkeypatch.context() as m:  # that process's view: another pid, another namespace, our pid unknown
            m.setattr(os, "getpid", lambda: 1)
            m.setattr(os, "kill", no_such_process)
            m.setattr(prefix_cache, "_namespace_tag", lambda: "0" * 12, raising=False)
            assert [p for p in folder.iterdir() if ".tmp-" in p.name]  # the build's file is there
            return prefix_cache.remove_stale_temporaries(folder)

    seen = _cleaned_mid_build(monkeypatch, from_another_namespace)
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    note = _attach(model, tok, encs)
    assert seen == [[]]
    assert note["used"] and note["splits_on_disk"] == 2, note
    assert _temporaries(tmp_path) == [] and len(list(folder.glob("*.values.npy"))) == 2


def test_an_entry_that_fails_to_be_written_for_another_cause_says_that_cause(tiny_bert, intent_data, tmp_path,
                                                                            monkeypatch):
    """A failed rename (the temporary file deleted under the build) was reported as a full disk."""
    monkeypatch.setattr(prefix_cache, "DISK_ENTRY_MB", 0.0)
    folder = tmp_path / "cache" / "prefix"

    def delete():
        for p in folder.iterdir():
            if ".tmp-" in p.name:
                p.unlink()

    _cleaned_mid_build(monkeypatch, delete)
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    note = _attach(model, tok, encs)
    assert note["used"] is False
    assert "No such file or directory" in note["reason"] and ".tmp-" in note["reason"], note
    assert "free space" not in note["reason"] and "LORATUNE_CACHE_DIR" in note["reason"]


def test_recorded_scores_are_those_evaluate_gives_on_the_saved_adapter(tiny_bert, intent_data, tmp_path):
    """The scored splits were fed float16-rounded states, so run.json's val/loss (1.40577) was not what `loratune
    evaluate --split validation` gave on the saved adapter (1.40700; prefix_cache=off: equal). Their states are
    float32 now: equal with the cache on, while the training split's stay float16."""
    out = tmp_path / "run"
    cfg = load_config(None, overrides(tiny_bert, intent_data, out, layers_to_transform="top:1", max_steps=6,
                                      eval_steps=3))
    run = api.train(cfg, progress=False)
    note = run["prefix_cache"]
    assert note["used"] and note["dtype"] == "float16" and note["scoring_dtype"] == "float32"
    assert sorted(s.values.dtype.name for s in prefix_cache._MEMORY.values()) == ["float16", "float32", "float32"]
    evaluated = api.evaluate(str(out), split="validation")
    assert evaluated["val/loss"] == run["best"]["val/loss"]
    assert evaluated["val/macro_f1"] == run["best"]["val/macro_f1"]


def test_a_run_holds_no_more_states_in_memory_than_the_budget(tiny_bert, intent_data, tmp_path, monkeypatch):
    """LORATUNE_PREFIX_CACHE_MB=0.001 (1 kB) left a run holding 34 kB of states in memory: a run kept every split
    there whatever the budget. Entries that would pass it go to disk now; where the folder cannot take them, the run
    goes uncached and says why."""
    monkeypatch.setattr(prefix_cache, "MEMORY_BUDGET_MB", 0.001)
    _, model, tok, encs = _model_and_data(tiny_bert, intent_data, tmp_path, layers_to_transform="top:1")
    note = _attach(model, tok, encs)
    assert note["used"] and note["splits_on_disk"] == 2, note
    assert sum(e.prefix.states.nbytes for e in encs) == 0 and sum(s.nbytes for s in prefix_cache._MEMORY.values()) == 0
    assert len(list((tmp_path / "cache" / "prefix").glob("*.values.npy"))) == 2
    # a budget that holds the first split only: the second goes to disk
    first = sum(len(x) for x in encs[0].ids) * 32 * 2
    monkeypatch.setattr(prefix_cache, "MEMORY_BUDGET_MB", (first + 1) / 2**20)
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache2"))
    prefix_cache.clear()
    note = _attach(model, tok, encs)
    assert note["splits_on_disk"] == 1 and encs[0].prefix.states.nbytes == first and encs[1].prefix.states.on_disk
    # no folder to take them: uncached, the reason recorded
    monkeypatch.setattr(prefix_cache, "MEMORY_BUDGET_MB", 0.001)
    (tmp_path / "file").write_text("a file where the cache folder should be")
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "file"))
    prefix_cache.clear()
    for e in encs:
        e.prefix = None
    note = _attach(model, tok, encs)
    assert note["used"] is False and "LORATUNE_PREFIX_CACHE_MB=0.001" in note["reason"], note
    assert all(e.prefix is None for e in encs) and not prefix_cache._MEMORY


def test_an_empty_cache_dir_variable_is_the_default_everywhere(monkeypatch, tmp_path):
    """LORATUNE_CACHE_DIR= (empty) put the prefix cache's entries under ./prefix, while the embeddings took the
    default: one rule (config.cache_root)."""
    from pathlib import Path

    from loratune import embeddings, slices

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LORATUNE_CACHE_DIR", "")
    root = Path.home() / ".cache" / "loratune"
    assert prefix_cache.cache_dir() == root / "prefix"
    assert embeddings.default_cache_dir() == root / "embeddings" and slices.cache_dir() == root
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "c"))
    assert prefix_cache.cache_dir() == tmp_path / "c" / "prefix" and slices.cache_dir() == tmp_path / "c"
