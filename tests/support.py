"""Shared test helpers. Tiny random-init models (BERT and Llama shapes, hidden 32, 2 layers) with a WordPiece tokenizer
written to a temp folder, and a small synthetic intent dataset the tiny models can learn."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INTENTS = {
    "card_lost": ["lost my card", "card is missing", "cannot find my card", "card was stolen"],
    "balance": ["what is my balance", "how much money do i have", "check account balance", "show my funds"],
    "transfer": ["send money to a friend", "transfer cash abroad", "make a bank transfer", "wire funds now"],
    "pin": ["change my pin", "forgot my pin code", "reset the pin", "pin is blocked"],
}
FILLERS = ["please", "hello", "i need help", "quickly", "today", "thanks", "urgent", "can you"]


def _vocab() -> list[str]:
    words = {w for phrases in INTENTS.values() for p in phrases for w in p.split()}
    words |= {w for f in FILLERS for w in f.split()}
    words |= set("abcdefghijklmnopqrstuvwxyz")
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words)


def run_record(status: str, **fields) -> str:
    """A fake run.json as a loratune run writes it, as far as a new run in its folder reads it (store.run_record: a
    status, loratune in its versions): a new run replaces only a loratune run's record."""
    return json.dumps({"status": status, **fields, "versions": {"loratune": "0.1.0"}}) + "\n"


def make_rows(n_per_label: int, seed: int, labels=None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for label in labels or INTENTS:
        for _ in range(n_per_label):
            text = f"{rng.choice(FILLERS)} {rng.choice(INTENTS[label])} {rng.choice(FILLERS)}"
            rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def flat(text: str) -> str:
    """Terminal text on one line: rich wraps lines at the terminal width."""
    return " ".join(text.split())


def traced_peak(fn, *args):
    """(fn(*args), the peak bytes Python allocated while it ran): a test of what a call holds in memory at once."""
    import tracemalloc

    tracemalloc.start()
    try:
        out = fn(*args)
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _save_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(_vocab())}, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def tiny_trainer_classifier(folder: Path, n_train_per_label: int):
    """(tokenizer, train rows, val rows, model, compute_metrics) for a plain Hugging Face `Trainer` run: a random-init
    BertForSequenceClassification (hidden 32, 2 layers) over the intents, accuracy and macro-F1 as metrics."""
    import numpy as np
    import torch
    from sklearn.metrics import f1_score
    from transformers import BertConfig, BertForSequenceClassification

    torch.set_num_threads(1)  # tiny model: threads only fight over the shared cores
    labels = sorted(INTENTS)
    tok = _save_tokenizer(folder)
    l2i = {lab: i for i, lab in enumerate(labels)}

    def encode(rows):
        return [dict(tok(r["text"]), labels=l2i[r["label"]]) for r in rows]

    train, val = encode(make_rows(n_train_per_label, seed=1)), encode(make_rows(5, seed=2))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=len(labels),
                     id2label=dict(enumerate(labels)), label2id=l2i)

    def metrics(p):
        pred = np.asarray(p.predictions).argmax(-1)
        return {"accuracy": float((pred == p.label_ids).mean()),
                "macro_f1": float(f1_score(p.label_ids, pred, average="macro", zero_division=0))}

    return tok, train, val, BertForSequenceClassification(cfg), metrics




def overrides(model: str, data: Path, out: Path, **extra) -> list[str]:
    """key=value overrides for a short tiny-model run."""
    base = {"name_or_path": model, "dataset_name": str(data), "output_dir": str(out), "max_steps": 12,
            "per_device_train_batch_size": 8, "learning_rate": 5e-3, "eval_steps": 4, "train_eval_size": 16,
            "target_modules": "[attn.q, attn.v]", "r": 4, "lora_alpha": 8, "max_length": 16}
    base.update(extra)
    return [f"{k}={v}" for k, v in full_drops_lora_keys(base).items()]


def full_drops_lora_keys(base: dict) -> dict:
    """A tiny run's settings without the LoRA-only keys (config.LORA_ONLY_KEYS) when they ask for adapter.method=full:
    a full run refuses them (it would not read them)."""
    from loratune.config import LORA_ONLY_KEYS

    if base.get("method") != "full":
        return base
    names = {k.split(".", 1)[1] for k in LORA_ONLY_KEYS}
    return {k: v for k, v in base.items() if k not in names}


def talking_lora_classifier(folder: str, data: Path, out: Path, **extra):
    """A tiny run's config, dataset, tokenizer and LoRA classifier (seed 0) whose B matrices are not zero, so the
    adapter changes the logits (a comparison of two forwards then means something)."""
    import torch

    from loratune import api
    from loratune.adapt import apply_adapter
    from loratune.config import load_config
    from loratune.models import load_classifier, load_tokenizer

    cfg = load_config(None, overrides(folder, data, out, **extra))
    dataset = api.prepare(cfg)
    tok = load_tokenizer(cfg.model)
    torch.manual_seed(0)
    model, _ = apply_adapter(load_classifier(cfg.model, len(dataset.label_space), False), cfg.adapter)
    with torch.no_grad():  # LoRA B starts at zero: give the adapter something to say
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return cfg, dataset, tok, model


def card_recipe(run_dir: Path, scope: dict, after: str = "") -> dict:
    """Run the adapter card's first Python block (adapter/README.md) as written, from the run directory (the recipe
    names the folder "adapter", relative to it), in `scope`; `after` marks the block to take (the text before it).
    Returns the scope the code filled."""
    import re

    card = (Path(run_dir) / "adapter" / "README.md").read_text(encoding="utf-8")
    code = re.search(re.escape(after) + r"```python\n(.*?)```", card, re.S).group(1)
    here = os.getcwd()
    os.chdir(run_dir)
    try:
        exec(code, scope)
    finally:
        os.chdir(here)
    return scope


def run_on(monkeypatch, encoding: str, argv: list[str]) -> tuple[int, str]:
    """main(argv) with stdout a stream of that encoding (strict, as Python's own stdout is): exit code, output
    (Windows redirects stdout as cp1252, LC_ALL=C gives ASCII)."""
    import io
    import sys

    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding=encoding, errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    from loratune.cli import main

    code = main(argv)
    out.flush()
    monkeypatch.undo()
    return code, raw.getvalue().decode(encoding)
