"""Runs of the trainers that wrap the Hugging Face Trainer or write their own logs (sentence-transformers, SetFit,
PyTorch Lightning, simpletransformers, torchtune, LLaMA-Factory), as a nineteenth bug hunt found them read wrongly.
Fixtures: tests/fixtures/wrappers (the Lightning event files built by its pl/mk*.py)."""

from __future__ import annotations

import json
import math
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


def test_a_setfit_run_reads_its_embedding_losses_its_lr_and_its_step_checkpoints(tmp_path):
    """SetFit logs `embedding_loss` / `eval_embedding_loss` (learning_rate on every entry) and saves
    checkpoints/step_N/trainer_state.json: it read "no train-loss trend logged", "no `lr` in the history", an eval set
    named 'embedding', and `diagnose checkpoints` exited 2 (only checkpoint-* was looked for)."""
    h = load_run(FIXTURES / "setfit_checkpoints" / "step_160")
    state = json.loads((FIXTURES / "setfit_checkpoints" / "step_160" / "trainer_state.json").read_text())
    train = [e["embedding_loss"] for e in state["log_history"] if "embedding_loss" in e]
    val = [e["eval_embedding_loss"] for e in state["log_history"] if "eval_embedding_loss" in e]
    assert [p["val/loss"] for p in h.points if "val/loss" in p] == pytest.approx(val)
    assert h.points[0]["train/loss"] == pytest.approx(sum(train[:3]) / 3)  # steps 1, 10, 20: the first eval's window
    assert h.points[-1]["train/loss_last"] == pytest.approx(train[-1])
    assert h.facts["learning_rate"].value == pytest.approx(2e-5, rel=0.01)
    assert not any("'embedding'" in n for n in h.notes)
    assert any("embedding_loss" in n and "train loss" in n for n in h.notes)
    d = diagnose(h)
    assert d.features["train_loss_untracked"] is None and d.features["peak_lr"] == pytest.approx(2e-5, rel=0.01)
    assert h.meta["task"] == EMBEDDING_TASK  # config.json MPNetModel: the body, trained contrastively
    # the output_dir: its newest step_N checkpoint, by N (step_80 sorts after step_160 by name)
    run = load_run(FIXTURES / "setfit_checkpoints")
    assert run.meta["steps_done"] == 160 and run.points[-1]["step"] == 160
    assert main(["diagnose", str(FIXTURES / "setfit_checkpoints")]) == 0
    # a rate logged only on the eval entries is read too
    log = [{"step": s, "loss": 2.0 - s / 100} for s in range(10, 101, 10)]
    log += [{"step": s, "eval_loss": 2.1 - s / 110, "learning_rate": 1e-4 * (1 - (s - 1) / 100)}
            for s in range(20, 101, 20)]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    assert load_run(tmp_path / "r").facts["learning_rate"].value == pytest.approx(1e-4, rel=0.05)
