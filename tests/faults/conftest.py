"""Fixtures for the fault-injection suite: the tiny random-init BERT and the toy intents (support.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import _save_tokenizer, make_rows, write_jsonl


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


class Proc:
    """A `loratune` subprocess, its output captured, stopped (or killed) by the test."""

    def __init__(self, args: list[str], cwd: Path, env: dict | None = None):
        self.out = cwd / "stdout.txt"
        self.err = cwd / "stderr.txt"
        self.p = subprocess.Popen([sys.executable, "-m", "loratune.cli", *args], cwd=cwd,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "400", **(env or {})},
                                  stdout=open(self.out, "w"), stderr=open(self.err, "w"), start_new_session=True)

    def wait_for(self, cond, timeout: float = 120.0) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and self.p.poll() is None:
            if cond():
                return True
            time.sleep(0.05)
        return False

    def signal(self, sig) -> None:
        os.kill(self.p.pid, sig)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.p.wait(timeout=timeout)
        finally:
            if self.p.poll() is None:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()

    @property
    def stderr(self) -> str:
        return " ".join(self.err.read_text().split())

    @property
    def stdout(self) -> str:
        return " ".join(self.out.read_text().split())


def history_lines(run_dir: Path) -> int:
    p = run_dir / "history.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0
