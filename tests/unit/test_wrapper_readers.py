"""Runs of the trainers that wrap the Hugging Face Trainer or write their own logs (sentence-transformers, SetFit,
PyTorch Lightning, simpletransformers, torchtune, LLaMA-Factory), as a nineteenth bug hunt found them read wrongly.
Fixtures: tests/fixtures/wrappers (the Lightning event files built by its pl/mk*.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.diagnose import diagnose
from loratune.history_io import EMBEDDING_TASK, load_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "wrappers"


def test_a_sentence_transformers_run_is_no_classifier(tmp_path):
    """A SentenceTransformerTrainer's STS run (config.json BertModel, no id2label; modules.json beside it) read as a
    3-class head from its first loss (1.109 ~ ln 3), and its slow run got `lr-too-small, learning_rate x2` on the
    clause "the run is a classifier: yes"."""
    h = load_run(FIXTURES / "stt_slow")
    assert h.meta["task"] == EMBEDDING_TASK and "n_classes" not in h.facts and "n_classes" not in h.meta
    assert "architecture BertModel" in h.facts["task"].source
    d = diagnose(h)
    assert d.features["classifier"] is None and d.features.get("n_classes") is None
    assert d.verdict != "lr-too-small"
    # the folder's sentence-transformers files say so with no architecture to read (a config without one)
    run = tmp_path / "st"
    shutil.copytree(FIXTURES / "stt_slow", run)
    (run / "config.json").write_text(json.dumps({"model_type": "bert"}))
    h = load_run(run)
    assert h.meta["task"] == EMBEDDING_TASK and "n_classes" not in h.facts
    assert h.facts["task"].source.startswith("modules.json")
    # a classifier's head still reads as one (the bare-Model row comes after every head's)
    (run / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                 "id2label": {"0": "a", "1": "b", "2": "c"}}))
    for f in ("modules.json", "config_sentence_transformers.json"):
        (run / f).unlink()
    h = load_run(run)
    assert h.meta["task"] == "single_label" and h.facts["n_classes"].value == 3
