"""A real Hugging Face `Trainer` run (tiny random-init BERT, no downloads) diagnosed from its trainer_state.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.diagnose import diagnose
from loratune.history_io import load_run

from support import INTENTS, tiny_trainer_classifier

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LABELS = sorted(INTENTS)


def _trainer_run(folder: Path, lr: float, steps: int = 60) -> Path:
    """Train BertForSequenceClassification (hidden 32, 2 layers) with eval sets `val` and `train` every 10 steps."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tok, train, val, model, metrics = tiny_trainer_classifier(folder, 12)
    out = folder / "out"
    args = TrainingArguments(output_dir=str(out), max_steps=steps, per_device_train_batch_size=8,
                             per_device_eval_batch_size=32, learning_rate=lr, eval_strategy="steps", eval_steps=10,
                             logging_steps=1, report_to="none", use_cpu=True, save_strategy="no", seed=0,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset={"val": val, "train": train[:16]},
                      data_collator=DataCollatorWithPadding(tok), compute_metrics=metrics)
    trainer.train()
    trainer.save_state()
    model.config.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory) -> Path:
    return _trainer_run(tmp_path_factory.mktemp("hf-learning"), lr=1e-2)


def test_trainer_state_maps_to_eval_points(learning_run):
    state = json.loads((learning_run / "trainer_state.json").read_text())
    run = load_run(learning_run)
    assert run.source == "hf-trainer" and run.meta["labels"] == LABELS
    assert [p["step"] for p in run.points] == [10, 20, 30, 40, 50, 60]  # val + train evals merged per step
    logs = [e for e in state["log_history"] if "loss" in e and "train_runtime" not in e]
    window = [e["loss"] for e in logs if 50 < e["step"] <= 60]
    last = run.points[-1]
    assert last["train/loss"] == pytest.approx(sum(window) / len(window))
    assert last["train/loss_first"] == window[0] and last["train/loss_last"] == window[-1]
    ev = [e for e in state["log_history"] if e.get("step") == 60]
    assert last["val/loss"] == next(e["eval_val_loss"] for e in ev if "eval_val_loss" in e)
    assert last["train_eval/macro_f1"] == next(e["eval_train_macro_f1"] for e in ev if "eval_train_macro_f1" in e)
    assert abs(last["val/n"] - 20) <= 1  # estimated from runtime x samples/s
    assert any("eval_val_macro_f1 -> val/macro_f1" in n for n in run.notes)


def test_learning_trainer_run_is_diagnosed(learning_run):
    d = diagnose(learning_run)
    f = d.features
    assert f["n_classes"] == 4
    assert f["val_loss_drop"] > 0.5 and f["val_metric_gain"] > 0.3
    assert f["gap_f1"] is not None and f["val_metric_se"] is not None
    assert d.verdict not in ("diverged", "lr-too-large", "lr-too-small", "underfit-capacity")
    assert d.fired("eval-too-noisy")  # 20 validation rows
    assert "val_pred_top_share" in f.missing  # no per-class numbers from a Trainer


def test_cli_reads_the_trainer_dir_and_its_state_file(learning_run, capsys):
    assert main(["diagnose", str(learning_run / "trainer_state.json"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"][0]["source"] == "hf-trainer"
    assert main(["diagnose", str(learning_run)]) == 0
    text = capsys.readouterr().out
    assert "verdict:" in text and "rule needs" in text


def test_huge_learning_rate_trainer_run_is_flagged(tmp_path):
    d = diagnose(_trainer_run(tmp_path, lr=1.0, steps=40))
    assert d.verdict in ("lr-too-large", "diverged"), [(x.rule_id, x.suppressed_by) for x in d.findings]
