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


def make_rows(n_per_label: int, seed: int, labels=None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for label in labels or INTENTS:
        for _ in range(n_per_label):
            text = f"{rng.choice(FILLERS)} {rng.choice(INTENTS[label])} {rng.choice(FILLERS)}"
            rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _save_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(_vocab())}, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok




def overrides(model: str, data: Path, out: Path, **extra) -> list[str]:
    """key=value overrides for a short tiny-model run."""
    base = {"name_or_path": model, "dataset_name": str(data), "output_dir": str(out), "max_steps": 12,
            "per_device_train_batch_size": 8, "learning_rate": 5e-3, "eval_steps": 4, "train_eval_size": 16,
            "target_modules": "[attn.q, attn.v]", "r": 4, "lora_alpha": 8, "max_length": 16}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]
