"""Runs made without loratune, read from real files written in the test: a TensorBoard dir written by the
Trainer, a TRL SFT run of a tiny Llama, three Trainer runs that differ in one knob, and the live
`LoratuneCallback` stopping a diverging run. Tiny random-init models, no downloads."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loratune.diagnose import compare, diagnose
from loratune.history_io import load_run, read_tensorboard, read_trainer_state

from support import INTENTS, _save_tokenizer, make_rows

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LABELS = sorted(INTENTS)
ROOT = Path(__file__).resolve().parents[2]


def _bert_trainer(folder: Path, *, lr: float, steps: int = 40, r: int = 4, alpha: int = 8, peft: bool = True,
                  report_to: str = "none", callbacks=(), scheduler: str = "linear", warmup: int = 0,
                  save: bool = True, eval_steps: int = 5, metrics: bool = True, eval_name: str = "", accum: int = 1,
                  two_sets: bool = False, save_steps: int | None = None, epochs: int | None = None,
                  resume: bool = False, per_label: int = 12, entropy: bool = False):
    """A tiny BERT classifier (+ LoRA through peft) trained by a plain Trainer on `per_label` rows of each of 4
    labels (12: 6 batches of 8); returns (output_dir, trainer). `epochs` trains so many epochs instead of `steps`;
    `resume` resumes from the output_dir's last checkpoint; `entropy`: compute_metrics also returns the predictions'
    mean entropy as `entropy` (a name TRL's SFTTrainer logs too)."""
    import numpy as np
    import torch
    from transformers import (BertConfig, BertForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    torch.set_num_threads(1)
    tok = _save_tokenizer(folder / "tok")
    l2i = {lab: i for i, lab in enumerate(LABELS)}
    train = [dict(tok(r_["text"]), labels=l2i[r_["label"]]) for r_ in make_rows(per_label, seed=1)]
    val = [dict(tok(r_["text"]), labels=l2i[r_["label"]]) for r_ in make_rows(5, seed=2)]
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=len(LABELS),
                     id2label=dict(enumerate(LABELS)), label2id=l2i)
    model = BertForSequenceClassification(cfg)
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=alpha,
                                                 target_modules=["query", "value"]))

    def compute(p):
        pred = np.asarray(p.predictions).argmax(-1)
        if entropy:
            z = np.asarray(p.predictions, dtype=np.float64)
            pr = np.exp(z - z.max(-1, keepdims=True))
            pr /= pr.sum(-1, keepdims=True)
            return {"accuracy": float((pred == p.label_ids).mean()),
                    "entropy": float(-(pr * np.log(pr + 1e-12)).sum(-1).mean())}
        return {"accuracy": float((pred == p.label_ids).mean())}

    out = folder / "out"
    args = TrainingArguments(
        output_dir=str(out), **({"num_train_epochs": epochs} if epochs else {"max_steps": steps}),
        per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=lr, eval_strategy="steps",
        eval_steps=eval_steps, logging_steps=1, report_to=report_to, use_cpu=True,
        save_strategy="steps" if save else "no", save_steps=save_steps or steps, seed=0, disable_tqdm=True,
        lr_scheduler_type=scheduler, warmup_steps=warmup, max_grad_norm=0.0 if lr >= 1 else 1.0,
        gradient_accumulation_steps=accum)
    trainer = Trainer(model=model, args=args, train_dataset=train,
                      eval_dataset={"a": val, "b": val[:3]} if two_sets else {eval_name: val} if eval_name else val,
                      data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=compute if metrics else None, callbacks=list(callbacks))
    trainer.train(resume_from_checkpoint=True if resume else None)
    return out, trainer


# ---- TensorBoard ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tb_run(tmp_path_factory):
    return _bert_trainer(tmp_path_factory.mktemp("tb"), lr=5e-3, report_to="tensorboard", save=False)


def test_tensorboard_dir_written_by_trainer_reads_like_its_log(tb_run):
    out, trainer = tb_run
    assert list(out.rglob("events.out.tfevents.*")) and not list(out.rglob("trainer_state.json"))
    run = load_run(out)  # no trainer_state.json: the event files are the record
    assert run.source == "tensorboard"
    from loratune.history_io import history_from_trainer_state

    live = history_from_trainer_state({"log_history": trainer.state.log_history}, out, name="live")
    assert [p["step"] for p in run.points] == [p["step"] for p in live.points] == [5, 10, 15, 20, 25, 30, 35, 40]
    for a, b in zip(run.points, live.points):
        assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-5)  # float32 in the event file
        assert a["val/accuracy"] == pytest.approx(b["val/accuracy"], rel=1e-5)
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5)
    assert run.facts["learning_rate"].value == pytest.approx(5e-3, rel=0.02)
    assert run.facts["lr_schedule"].value == "linear"
    d = diagnose(out)
    assert d.source == "tensorboard" and d.features["n_eval_points"] == 8


# ---- facts: lr schedule, adapter config, classes -------------------------------------------------

@pytest.mark.parametrize("scheduler, warmup", [("cosine", 0), ("linear", 8), ("constant", 0)])
def test_learning_rate_peak_and_schedule_from_the_log(tmp_path, scheduler, warmup):
    out, _ = _bert_trainer(tmp_path, lr=3e-3, steps=30, scheduler=scheduler, warmup=warmup, eval_steps=10)
    run = load_run(out)
    assert run.source == "hf-trainer"
    assert run.facts["learning_rate"].value == pytest.approx(3e-3, rel=0.02)
    assert run.facts["lr_schedule"].value == scheduler
    assert ("warmup_steps" in run.facts) == (warmup > 0)
    a = run.facts
    assert (a["r"].value, a["lora_alpha"].value, a["lora_scale"].value) == (4, 8, 2.0)
    assert a["r"].source == "adapter_config.json" and a["target_modules"].value == ["query", "value"]
    # no config.json beside the checkpoint: the classes come from the saved head's rows in its safetensors header
    assert a["n_classes"].value == 4 and "adapter_model.safetensors" in a["n_classes"].source
    assert run.config["adapter"]["r"] == 4 and run.config["train"]["learning_rate"] == a["learning_rate"].value


def test_training_args_bin_is_never_unpickled(tmp_path, monkeypatch):
    out, _ = _bert_trainer(tmp_path, lr=3e-3, steps=10, eval_steps=5)
    ckpt = next(out.glob("checkpoint-*"))
    assert (ckpt / "training_args.bin").is_file()
    (ckpt / "training_args.bin").write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")  # a hostile pickle
    import pickle

    def refuse(*a, **k):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    run = read_trainer_state(ckpt / "trainer_state.json")
    assert run.source == "hf-trainer" and len(run.points) == 2


@pytest.mark.parametrize("eval_name", ["yahma/alpaca-cleaned", "validation"])
def test_one_named_eval_set_is_the_validation_set(tmp_path, eval_name):
    # `eval_dataset={name: ds}` makes the Trainer log `eval_<name>_loss`: with one held-out set and no set under a
    # validation name, that set is what the run validated on
    out, _ = _bert_trainer(tmp_path, lr=3e-3, steps=10, eval_steps=5, eval_name=eval_name)
    run = load_run(out)
    assert [p["step"] for p in run.points if "val/loss" in p] == [5, 10]
    assert all(isinstance(p.get("val/accuracy"), float) for p in run.points if "val/loss" in p)


def test_a_train_set_beside_a_named_set_stays_the_train_eval(tmp_path):
    from loratune.history_io import history_from_trainer_state

    def points(eval_entry):
        state = {"global_step": 5, "max_steps": 5,
                 "log_history": [{"step": 5, "epoch": 1.0, "loss": 1.0}, {"step": 5, "epoch": 1.0, **eval_entry}]}
        (point,) = history_from_trainer_state(state, tmp_path, name="run").points
        return {k: v for k, v in point.items() if not k.startswith("train/")}

    assert points({"eval_train_loss": 0.5, "eval_heldout_loss": 0.7, "eval_heldout_accuracy": 0.8}) == {
        "step": 5, "epoch": 1.0, "train_eval/loss": 0.5, "val/loss": 0.7, "val/accuracy": 0.8}
    # two named sets: neither is chosen as the validation set
    assert points({"eval_a_loss": 0.5, "eval_b_loss": 0.7}) == {"step": 5, "epoch": 1.0, "eval_a/loss": 0.5,
                                                                "eval_b/loss": 0.7}


# ---- the minimal-intervention experiment on Trainer runs --------------------------------------------

def test_three_trainer_runs_differing_in_one_knob_are_compared(tmp_path):
    base, _ = _bert_trainer(tmp_path / "base", lr=1.25e-2, steps=40)
    lr4, _ = _bert_trainer(tmp_path / "lr4", lr=5e-2, steps=40)
    r4, _ = _bert_trainer(tmp_path / "r4", lr=1.25e-2, steps=40, r=16, alpha=32)
    c = compare([base, lr4, r4])
    knobs = {g.knob: {row[0] for row in g.runs} for g in c.groups}
    assert set(knobs) == {"learning_rate", "r"}, c.notes
    assert len(knobs["learning_rate"]) == 2 and len(knobs["r"]) == 2
    lr_group = next(g for g in c.groups if g.knob == "learning_rate")
    r_group = next(g for g in c.groups if g.knob == "r")
    assert "scale lora_alpha/r fixed" in r_group.note
    assert lr_group.effect > r_group.effect
    assert c.fired("optimization-bound"), [(f.rule_id, f.suppressed_by) for f in c.findings]
    f = next(f for f in c.active if f.rule_id == "optimization-bound")
    assert any("deltas" in n for n in f.notes) and any("noise" in n for n in f.notes)


# ---- TRL SFTTrainer on a tiny Llama ---------------------------------------------------------------

def test_trl_sft_run_is_read_as_a_first_class_run(tmp_path):
    import torch
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(1)
    tok, data, model = _tiny_sft(tmp_path, per_intent=8)
    from peft import LoraConfig

    out = tmp_path / "sft"
    args = SFTConfig(output_dir=str(out), max_steps=20, per_device_train_batch_size=8, learning_rate=5e-3,
                     eval_strategy="steps", eval_steps=5, logging_steps=1, report_to="none", use_cpu=True,
                     save_strategy="steps", save_steps=20, max_length=32, disable_tqdm=True, seed=0)
    from loratune.integrations import LoratuneCallback
    from loratune.history_io import CALLBACK_RECORD_DIR

    trainer = SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(12)),
                         processing_class=tok, peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj",
                                                                                                           "v_proj"]),
                         callbacks=[LoratuneCallback(printer=lambda *_: None)])
    trainer.train()
    run = load_run(out / "checkpoint-20")  # the Trainer's own files (the folder itself holds the callback's record)
    assert run.source == "trl" and run.meta["task"] == "causal-lm"
    assert "n_classes" not in run.facts  # a language model's first loss is not ln(classes)
    assert all("val/token_accuracy" in p for p in run.points if "val/loss" in p)
    # TRL's eval_num_tokens is its running count of training tokens, not a number of the eval set
    assert not any(k.endswith("num_tokens") for p in run.points for k in p)
    d = diagnose(out / "checkpoint-20")
    assert d.features.details["val_metric"] == "val/token_accuracy"
    assert d.features["train_loss_vs_chance"] is None and d.facts["r"]["value"] == 8
    # the callback's own record says the adapter is LoRA (peft_type from the live peft config), as the files do
    live = diagnose(out / CALLBACK_RECORD_DIR)
    assert live.features["lora"] == 1.0 and json.loads((out / CALLBACK_RECORD_DIR / "run.json").read_text())["method"] == "lora"


def test_the_callback_records_a_full_fine_tune_as_method_full(tmp_path):
    # an SFTTrainer given no peft_config trains every weight of the live model; the callback wrote `method` only for
    # LoRA, so the record's overfit read "r /2, -ffn, lora_dropout up" and `lora` stayed unknown
    import torch
    from trl import SFTConfig, SFTTrainer

    from loratune.history_io import CALLBACK_RECORD_DIR
    from loratune.integrations import LoratuneCallback

    torch.set_num_threads(1)
    tok, data, model = _tiny_sft(tmp_path, per_intent=2)
    out = tmp_path / "full"
    args = SFTConfig(output_dir=str(out), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
                     eval_strategy="steps", eval_steps=2, logging_steps=1, report_to="none", use_cpu=True,
                     save_strategy="no", max_length=32, disable_tqdm=True, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(4)),
                         processing_class=tok, callbacks=[LoratuneCallback(printer=lambda *_: None)])
    trainer.train()
    record = json.loads((out / CALLBACK_RECORD_DIR / "run.json").read_text())
    assert record["method"] == "full"
    d = diagnose(out / CALLBACK_RECORD_DIR)
    assert d.features["lora_adapter"] == 0.0 and "every weight" in d.features.missing["lora"]


# ---- the live callback -------------------------------------------------------------------------------

def test_callback_stops_a_diverging_run_and_says_why(tmp_path):
    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append)
    out, trainer = _bert_trainer(tmp_path, lr=30.0, steps=60, peft=False, callbacks=[cb], eval_steps=5)
    assert cb.stopped_by == "diverged"
    assert trainer.state.global_step < 60
    assert any("stopping the training" in m for m in said)
    # the finding says which reading of the rule this run showed (a `why` of one of diverged's routes)
    from loratune.rules import RULES
    whys = [item.why for item in next(r for r in RULES if r.id == "diverged").when.items]
    assert any(m.startswith("[loratune] step") and "diverged - " in m and any(w in m for w in whys) for m in said)
    rec = load_run(out / "loratune")
    assert json.loads((out / "loratune" / "run.json").read_text())["stopped_by"] == "diverged"
    assert diagnose(rec).verdict == "diverged"


def test_callback_is_silent_on_a_learning_run_and_leaves_a_record(tmp_path):
    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, overfit_patience=1)
    out, trainer = _bert_trainer(tmp_path, lr=5e-3, steps=30, callbacks=[cb], eval_steps=10)
    assert cb.stopped_by is None and trainer.state.global_step == 30
    assert [m for m in said if "eval-too-noisy" not in m] == []
    meta = json.loads((out / "loratune" / "run.json").read_text())
    assert meta["status"] == "completed" and meta["labels"] == LABELS and meta["config"]["adapter"]["r"] == 4
    assert [p["step"] for p in load_run(out / "loratune").points][:3] == [10, 20, 30]


def test_callback_rejects_unknown_options():
    from loratune.integrations import LoratuneCallback

    with pytest.raises(ValueError, match="stop_on"):
        LoratuneCallback(stop_on=("nan",))
    with pytest.raises(ValueError, match="thresholds"):
        LoratuneCallback(thresholds={"no_such": 1})


def test_diagnosing_an_external_run_imports_no_torch(tb_run):
    out, _ = tb_run
    code = ("import sys, json; from loratune.diagnose import diagnose; d = diagnose(sys.argv[1]); "
            "print(json.dumps({'verdict': d.verdict, 'torch': 'torch' in sys.modules, "
            "'transformers': 'transformers' in sys.modules}))")
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    got = json.loads(res.stdout)
    assert got == {"verdict": got["verdict"], "torch": False, "transformers": False}


def _tiny_sft(tmp_path: Path, per_intent: int):
    """A word-level tokenizer, prompt/completion intent rows and a tiny random-init Llama (seed 0) for TRL's SFTTrainer."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _save_tokenizer(tmp_path / "tok")
    tok.eos_token, tok.pad_token = "[SEP]", "[PAD]"
    data = Dataset.from_list([{"prompt": r_["text"] + " intent:", "completion": " " + r_["label"]}
                              for r_ in make_rows(per_intent, seed=3)])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                                         eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id))
    return tok, data, model


def _evaluate_each(cb, log: list[dict], max_steps: int, out) -> tuple[object, int | None]:
    """Feed `cb` the Trainer's evaluations one at a time, the log growing as a run's does; returns (control, the
    step it stopped at)."""
    from types import SimpleNamespace

    control = SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(SimpleNamespace(output_dir=str(out)), None, control)
    for k, e in enumerate(log):
        if "eval_loss" not in e:
            continue
        state = SimpleNamespace(max_steps=max_steps, num_train_epochs=10, train_batch_size=16, logging_steps=1,
                                eval_steps=1, save_steps=500, global_step=e["step"], log_history=log[:k + 1],
                                is_world_process_zero=True)
        cb.on_evaluate(SimpleNamespace(output_dir=str(out)), state, control)
        if control.should_training_stop:
            return control, e["step"]
    return control, None


@pytest.mark.parametrize("acc, stops", [
    ([0.6929] * 8, True),  # every eval the majority share, the val loss pinned at a usual lr: a one-class collapse
    ([0.62, 0.66, 0.69, 0.71, 0.73, 0.74, 0.75, 0.76], False),  # near miss: the same losses, predictions moving
])
def test_callback_stops_on_a_collapse_at_a_usual_lr(tmp_path, acc, stops):
    from loratune.integrations import LoratuneCallback

    val = [0.6311, 0.6177, 0.6169, 0.6188, 0.6174, 0.6171, 0.6183, 0.6175]
    log = []
    for i, (v, a) in enumerate(zip(val, acc)):
        step = 70 * (i + 1)
        log.append({"step": step, "epoch": i + 1.0, "loss": 0.60 + 0.02 * (i % 2), "learning_rate": 2e-5,
                    "grad_norm": 1.0})
        log.append({"step": step, "epoch": i + 1.0, "eval_loss": v, "eval_accuracy": a, "eval_runtime": 2.8,
                    "eval_samples_per_second": 100.0})
    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, record=False)
    control, at = _evaluate_each(cb, log, 700, tmp_path)
    assert (cb.last.verdict == "collapsed") == stops, [(f.rule_id, f.suppressed_by) for f in cb.last.findings]
    assert control.should_training_stop == stops and (cb.stopped_by == "collapse") == stops
    assert stops == any("collapsed to one class" in m for m in said)
    if stops:  # collapsed from the 4th eval (step 280, more than few_evals_max evals); held over 0.2 x 700 steps
        assert at == 420 and "since step 280" in said[-1], (at, said)


def _pinned_at_start(evals: int, every: int, creep: float = 0.0) -> list[dict]:
    """A 4-class run at its initial state: train and val loss at ln 4 (jittering, or creeping down by `creep` an
    eval), accuracy at the class share 0.25."""
    log = []
    for i in range(1, evals + 1):
        step = every * i
        log.append({"step": step, "epoch": step / 4, "loss": 1.386 + 0.01 * (-1) ** i, "learning_rate": 5e-3,
                    "grad_norm": 0.4})
        log.append({"step": step, "epoch": step / 4, "eval_loss": 1.3863 + 1e-5 * (-1) ** i - creep * i,
                    "eval_accuracy": 0.25,
                    "eval_runtime": 1.0, "eval_samples_per_second": 2000.0})
    return log


def test_callback_waits_before_calling_a_model_at_its_initial_loss_collapsed(tmp_path):
    # a tiny BERT at lr 5e-3 evaluated every step of 100 sits at ln(4) with one class predicted for its first 10
    # steps, then learns (0.90 accuracy at the end): the rule reads `collapsed` from the 4th eval, but a collapse
    # must hold over COLLAPSE_HOLD of the plan before the callback says it or stops
    from loratune.integrations import LoratuneCallback
    from loratune.integrations.trainer import COLLAPSE_HOLD

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, record=False)
    control, at = _evaluate_each(cb, _pinned_at_start(10, 1), 100, tmp_path)
    assert cb.last.verdict == "collapsed"  # the diagnosis of the curve so far
    assert at is None and cb.stopped_by is None and said == []
    # the same pin held on: stopped once it covered COLLAPSE_HOLD of the 100 planned steps (first read at step 4)
    cb = LoratuneCallback(printer=said.append, record=False)
    control, at = _evaluate_each(cb, _pinned_at_start(40, 1), 100, tmp_path)
    assert at == 4 + round(COLLAPSE_HOLD * 100) and cb.stopped_by == "collapse"
    assert len(said) == 2 and said[0].startswith(f"[loratune] step {at}: collapsed")
    # ...but a val loss creeping to a new low at every eval is a model moving, however slowly: never stopped
    cb = LoratuneCallback(printer=said.append, record=False)
    control, at = _evaluate_each(cb, _pinned_at_start(40, 1, creep=1e-4), 100, tmp_path)
    assert at is None and cb.stopped_by is None


def _evaluations(rows, labels=None) -> list[dict]:
    """A Trainer log of (step, train loss, lr, val loss, val macro-F1) rows, one evaluation a row."""
    log = []
    for step, loss, lr, vloss, f1 in rows:
        log.append({"step": step, "epoch": step / 6, "loss": loss, "learning_rate": lr, "grad_norm": 0.5})
        log.append({"step": step, "epoch": step / 6, "eval_loss": vloss, "eval_macro_f1": f1, "eval_runtime": 0.01})
    return log


def _said_live(tmp_path, log, max_steps, labels=None) -> tuple[list[str], object]:
    """What the callback prints evaluating `log` one evaluation at a time (a model whose config names `labels`)."""
    from types import SimpleNamespace

    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, record=False)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    model = SimpleNamespace(config=SimpleNamespace(id2label=dict(enumerate(labels or [])), architectures=None))
    cb.on_train_begin(args, None, control)
    for k, e in enumerate(log):
        if "eval_loss" in e:
            state = SimpleNamespace(max_steps=max_steps, num_train_epochs=10, train_batch_size=8, logging_steps=5,
                                    eval_steps=5, save_steps=500, global_step=e["step"], log_history=log[:k + 1],
                                    is_world_process_zero=True)
            cb.on_evaluate(args, state, control, model=model)
    return said, cb


# a tiny BERT at lr 5e-3 (full fine-tuning, 80 steps planned, evaluated every 5): its first 20 steps, then it went on
# to macro-F1 1.00 and a healthy verdict
SLOW_START = [(5, 1.4056, 0.0047, 1.3885, 0.1), (10, 1.3881, 0.0044, 1.3875, 0.1), (15, 1.3934, 0.0041, 1.3809, 0.2516),
              (20, 1.3676, 0.0038, 1.3399, 0.3009)]


def test_a_slow_fall_still_going_mid_run_is_not_called_too_small_an_lr_until_the_runs_end(tmp_path):
    # it printed "lr-too-small - both losses fall slowly and steadily, still falling at the end; next move:
    # learning_rate x2" at step 20 of 80: mid-run every learning run is still falling at "the end"
    said, cb = _said_live(tmp_path, _evaluations(SLOW_START), 80)
    assert cb.last.verdict == "lr-too-small"  # the diagnosis of the curve so far reads so...
    assert said == []  # ...but it is not said mid-run
    # the same curve at the run's last planned step is a run that ended so: said there
    said, cb = _said_live(tmp_path, _evaluations(SLOW_START), 20)
    assert len(said) == 1 and said[0].startswith("[loratune] step 20: lr-too-small - both losses fall slowly")


def test_a_slow_fall_is_said_once_plan_cut_max_of_the_plan_ran_or_at_the_end_of_training(tmp_path):
    # the wait was 'the run's last planned step': with max_steps 21..25 (evaluated every 5) no evaluation fell on it
    # and nothing was said, while the record said lr-too-small; it waits for plan_cut_max, as the rule's other routes
    for max_steps in (21, 25, 36):  # step 20 of 36 is 0.56 of the plan
        said, cb = _said_live(tmp_path / str(max_steps), _evaluations(SLOW_START), max_steps)
        assert cb.last.verdict == "lr-too-small"
        assert [m.split(" - ")[0] for m in said] == ["[loratune] step 20: lr-too-small"], (max_steps, said)
    said, cb = _said_live(tmp_path / "41", _evaluations(SLOW_START), 41)  # 0.49 of the plan: not yet
    assert said == []
    # evaluations that stopped early in the plan (eval_delay, or a last step no evaluation falls on): the finding the
    # final diagnosis holds is said at the end of training
    from types import SimpleNamespace

    from loratune.integrations import LoratuneCallback

    said = []
    cb = LoratuneCallback(printer=said.append)
    args, control = SimpleNamespace(output_dir=str(tmp_path / "end")), SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(args, None, control)
    log = _evaluations(SLOW_START)
    state = SimpleNamespace(max_steps=80, num_train_epochs=10, train_batch_size=8, logging_steps=5, eval_steps=5,
                            save_steps=500, global_step=20, log_history=log, is_world_process_zero=True)
    cb.on_evaluate(args, state, control)
    assert said == []
    state.global_step = 80
    cb.on_train_end(args, state, control)
    meta = json.loads((tmp_path / "end" / "loratune" / "run.json").read_text())
    assert meta["verdict"] == "lr-too-small"
    assert [m.split(" - ")[0] for m in said] == ["[loratune] end of training (step 80): lr-too-small"], said


def test_a_finding_said_while_a_waiting_route_holds_beside_another_reads_the_other_route(tmp_path, monkeypatch):
    # step 35 of 40 (lr 2e-3, both losses within 0.5% of ln 4): printed 'still falling at the end', the reading of
    # the route it waited on, because 'barely moved over a plan that ran' also held (the first holding route's text)
    import dataclasses

    from loratune.integrations import trainer

    waits = (dataclasses.replace(trainer.MIDRUN_WAITS[0], threshold=1.0),) + trainer.MIDRUN_WAITS[1:]
    monkeypatch.setattr(trainer, "MIDRUN_WAITS", waits)  # the wait as it was: still untrusted at step 35 of 40
    rows = [(5, 1.394, 0.0018, 1.387, 0.1), (10, 1.3857, 0.0016, 1.3869, 0.1), (15, 1.3892, 0.0013, 1.3864, 0.1),
            (20, 1.3903, 0.0011, 1.3856, 0.1), (25, 1.382, 0.0008, 1.3845, 0.1), (30, 1.3834, 0.0006, 1.3829, 0.1),
            (35, 1.3824, 0.0003, 1.381, 0.2516)]
    said, cb = _said_live(tmp_path, _evaluations(rows), 40, ["a", "b", "c", "d"])
    assert cb.last.finding("lr-too-small").route == ("both losses fall slowly and steadily, still falling at the end",)
    assert [m.split("; next")[0] for m in said if "lr-too-small" in m] == [
        "[loratune] step 35: lr-too-small - both losses barely moved over a plan that ran"], said


def test_a_val_metric_that_never_gained_is_not_said_at_too_few_evaluations(tmp_path):
    # lr 1e-2: macro-F1 0.0 at the first eval read "lr-too-large - ... a val metric that never gained" at step 5
    # (one point: nothing to gain from yet); the run went on to 0.14 at its 4th eval and 0.51 later
    labels = ["a", "b", "c", "d"]
    rows = [(5, 0.69, 0.01, 0.673, 0.0), (10, 0.665, 0.0091, 0.644, 0.0), (15, 0.653, 0.0083, 0.621, 0.0833),
            (20, 0.613, 0.0075, 0.609, 0.1429)]
    said, cb = _said_live(tmp_path, _evaluations(rows[:1]), 60, labels)
    assert cb.last.verdict == "lr-too-large" and said == []
    said, cb = _said_live(tmp_path, _evaluations(rows), 60, labels)
    assert not any("lr-too-large" in m for m in said), said
    # a metric still flat past few_evals_max evals never gained: said at the 4th
    flat = [r[:4] + (0.0 if r[0] < 20 else 0.02,) for r in rows]
    said, cb = _said_live(tmp_path, _evaluations(flat), 60, labels)
    assert [m.split(" - ")[0] for m in said if "lr-too-large" in m] == ["[loratune] step 20: lr-too-large"], said


def test_a_loss_logged_beside_a_nan_gradient_is_null_and_the_class_count_and_task_are_the_live_models(tmp_path):
    # logging_steps=4 over steps of loss 1.387, nan, nan, nan: the Trainer logged loss 0.8667 (the finite steps' mean)
    # with grad_norm nan; the callback said it "stands in for a non-finite one" yet recorded train/loss 0.8667, and
    # estimated 2 classes from it (a multi-label model of 4 labels: task None, n_classes 2)
    from types import SimpleNamespace

    from loratune.integrations import LoratuneCallback

    labels = ["balance", "card_lost", "pin", "transfer"]
    config = {"id2label": dict(enumerate(labels)), "num_labels": 4, "problem_type": "multi_label_classification",
              "model_type": "bert", "architectures": None}
    model = SimpleNamespace(config=SimpleNamespace(id2label=dict(enumerate(labels)), architectures=None,
                                                   to_dict=lambda: dict(config)))
    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, stop_on=())
    args, control = SimpleNamespace(output_dir=str(tmp_path), fp16=False), SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(args, None, control)
    log = [{"step": 4, "epoch": 0.67, "loss": 0.8667, "grad_norm": float("nan"), "learning_rate": 1e-3},
           {"step": 4, "epoch": 0.67, "eval_loss": 0.69, "eval_macro_f1": 0.1, "eval_runtime": 0.01}]
    state = SimpleNamespace(max_steps=20, num_train_epochs=4, train_batch_size=8, logging_steps=4, eval_steps=4,
                            save_steps=500, global_step=4, log_history=log, is_world_process_zero=True)
    cb.on_evaluate(args, state, control, model=model)
    meta = json.loads((tmp_path / "loratune" / "run.json").read_text())
    points = [json.loads(x) for x in (tmp_path / "loratune" / "history.jsonl").read_text().splitlines()]
    assert points[0]["train/loss"] is None
    assert (meta["task"], meta["n_classes"], meta["labels"]) == ("multi_label", 4, labels)
    assert meta["facts"]["n_classes"] == {"value": 4, "source": "the live model's config id2label"}
    # under fp16 a finite loss beside a non-finite norm is a step the loss scaler skipped: the loss is kept
    cb = LoratuneCallback(printer=said.append, stop_on=())
    args.fp16 = True
    cb.on_train_begin(args, None, control)
    cb.on_evaluate(args, state, control, model=model)
    points = [json.loads(x) for x in (tmp_path / "loratune" / "history.jsonl").read_text().splitlines()]
    assert points[0]["train/loss"] == 0.8667
    cb.on_train_end(args, state, control, model=model)
    # accelerate's --mixed_precision fp16: transformers 5 sets args.mixed_precision 'fp16', args.fp16 False (the
    # loss was recorded null, and on_log stopped the run as diverged)
    for fp16_args in (SimpleNamespace(output_dir=str(tmp_path), fp16=False, mixed_precision="fp16"),):
        said.clear()
        cb = LoratuneCallback(printer=said.append)
        control.should_training_stop = False
        cb.on_train_begin(fp16_args, None, control)
        cb.on_log(fp16_args, state, control, logs={**log[0], "grad_norm": float("inf")})
        assert not control.should_training_stop and said == []  # a step the loss scaler skipped
        cb.on_evaluate(fp16_args, state, control, model=model)
        points = [json.loads(x) for x in (tmp_path / "loratune" / "history.jsonl").read_text().splitlines()]
        assert points[0]["train/loss"] == 0.8667
        cb.on_train_end(fp16_args, state, control, model=model)


def test_a_live_configs_default_labels_are_no_class_count(tmp_path):
    # a custom nn.Module with a 4-class head and a BertModel's config: cfg.to_dict() kept the default id2label
    # {0: LABEL_0, 1: LABEL_1} (save_pretrained drops it), read as 2 classes "from the live model's config id2label";
    # its loss near ln 4 then read far above ln 2 and the run was stopped as diverged
    from types import SimpleNamespace

    from transformers import BertConfig

    from loratune.integrations import LoratuneCallback

    class Custom:  # (a module whose config is its encoder's)
        config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(args, None, control)
    log = [{"step": 5, "epoch": 0.8, "loss": 1.41, "learning_rate": 1e-4, "grad_norm": 0.5},
           {"step": 5, "epoch": 0.8, "eval_loss": 1.389, "eval_accuracy": 0.2, "eval_runtime": 0.01}]
    state = SimpleNamespace(max_steps=40, num_train_epochs=7, train_batch_size=8, logging_steps=5, eval_steps=5,
                            save_steps=500, global_step=5, log_history=log, is_world_process_zero=True)
    cb.on_evaluate(args, state, control, model=Custom())
    meta = json.loads((tmp_path / "loratune" / "run.json").read_text())
    assert not control.should_training_stop and said == [], said
    assert meta.get("labels") is None and "id2label" not in str(meta.get("facts", {}).get("n_classes"))
    assert meta.get("n_classes") != 2
    cb.on_train_end(args, state, control)


def test_show_of_a_callback_record_names_the_output_dir_and_the_trainers_best_checkpoint(tmp_path, capsys):
    # load_best_model_at_end=True: `loratune show <output_dir>/loratune` said "(no model saved)" and named the run
    # `loratune` (read as a `loratune train` run with no saved_model)
    from types import SimpleNamespace

    from loratune.cli import main
    from loratune.integrations import LoratuneCallback

    out = tmp_path / "my-run"
    cb = LoratuneCallback(printer=lambda *_: None)
    args, control = SimpleNamespace(output_dir=str(out)), SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(args, None, control)
    log = _evaluations(SLOW_START)
    state = SimpleNamespace(max_steps=20, num_train_epochs=4, train_batch_size=8, logging_steps=5, eval_steps=5,
                            save_steps=5, global_step=20, log_history=log, is_world_process_zero=True,
                            best_model_checkpoint=str(out / "checkpoint-20"))
    cb.on_evaluate(args, state, control)
    cb.on_train_end(args, state, control)
    for path in (out / "loratune", out / "loratune" / "run.json"):
        assert main(["show", str(path)]) == 0
        shown = " ".join(capsys.readouterr().out.split())  # (rich wraps long lines, a path at its hyphens too)
        assert "my-run" in shown.split("completed")[0] and "no model saved" not in shown
        assert f"bestcheckpoint(best_model_checkpoint):{out / 'checkpoint-20'}" in shown.replace(" ", "")
        assert "checkpoint's the live" not in shown  # (a source name dropped into a sentence for a file name)
    # the output_dir moved: the recorded path is gone, the checkpoint of its name in the moved folder is said; and
    # `show <output_dir>` of the Trainer's own files (trainer_state.json holds best_model_checkpoint too) says it too
    (out / "checkpoint-20").mkdir()
    (out / "trainer_state.json").write_text(json.dumps({
        "global_step": 20, "max_steps": 20, "log_history": log, "best_model_checkpoint": str(out / "checkpoint-20")}))
    moved = tmp_path / "moved-run"
    out.rename(moved)
    for path in (moved, moved / "loratune"):
        assert main(["show", str(path)]) == 0
        shown = capsys.readouterr().out.replace("\n", "").replace(" ", "")
        assert f"bestcheckpoint(best_model_checkpoint):{moved / 'checkpoint-20'}" in shown, path


def test_every_midrun_wait_names_one_route_of_its_rule_and_a_known_feature_and_threshold():
    from loratune.features import FEATURES
    from loratune.integrations.trainer import MIDRUN_WAITS
    from loratune.rules import THRESHOLDS

    for w in MIDRUN_WAITS:
        assert w.route().why and w.feature in FEATURES and w.op in ("<", "<=", ">", ">=")
        assert not isinstance(w.threshold, str) or w.threshold in THRESHOLDS


def test_an_evaluation_after_training_keeps_the_records_final_status(tmp_path):
    # `trainer.train(); trainer.evaluate()`: the evaluation after on_train_end must not turn `completed` back into
    # `running` (which `loratune show` then reads as a process that died)
    from types import SimpleNamespace

    from loratune.integrations import LoratuneCallback

    log = _pinned_at_start(3, 5)
    state = SimpleNamespace(max_steps=15, num_train_epochs=1, train_batch_size=8, logging_steps=5, eval_steps=5,
                            save_steps=500, global_step=15, log_history=log, is_world_process_zero=True)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    cb = LoratuneCallback(printer=lambda s: None)
    cb.on_evaluate(args, state, control)  # trainer.evaluate() before training: no record of a run
    record = tmp_path / "loratune" / "run.json"
    assert not record.exists()
    cb.on_train_begin(args, state, control)
    cb.on_evaluate(args, state, control)
    assert json.loads(record.read_text())["status"] == "running"
    cb.on_train_end(args, state, control)
    assert json.loads(record.read_text())["status"] == "completed"
    before = record.read_text()
    # load_best_model_at_end reloads an earlier checkpoint, whose evaluate() logs its numbers at the last step
    state.log_history = log + [{"step": 15, "eval_loss": 2.5, "eval_accuracy": 0.25, "eval_runtime": 1.0,
                                "eval_samples_per_second": 2000.0}]
    cb.on_evaluate(args, state, control)
    assert record.read_text() == before and not control.should_training_stop  # the record is what training measured
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": state.log_history}))
    h = load_run(tmp_path)  # the Trainer's own file, read by `loratune diagnose`: the training-time eval is kept
    assert h.points[-1]["val/loss"] == log[-1]["eval_loss"] and any("logged again" in n for n in h.notes)


@pytest.mark.parametrize("peft_knobs, method", [(None, "unknown"), ({"r": 8, "lora_alpha": 16}, "lora")])
def test_a_callback_record_of_a_plain_fine_tune_is_not_called_lora(tmp_path, monkeypatch, peft_knobs, method):
    from types import SimpleNamespace

    import loratune.integrations.trainer as T
    from loratune.integrations import LoratuneCallback
    from loratune.report import run_report

    monkeypatch.setattr(T, "_peft_config", lambda model: peft_knobs)  # what a peft (or plain) model gives
    state = SimpleNamespace(max_steps=15, num_train_epochs=1, train_batch_size=8, logging_steps=5, eval_steps=5,
                            save_steps=500, global_step=15, log_history=_pinned_at_start(3, 5),
                            is_world_process_zero=True)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    cb = LoratuneCallback(printer=lambda s: None)
    cb.on_train_begin(args, state, control)
    cb.on_evaluate(args, state, control)
    cb.on_train_end(args, state, control)
    assert run_report(tmp_path / "loratune", examples=False).method == method


def test_the_callback_reads_a_classifiers_losses_summed_over_accumulation_as_their_mean(tmp_path):
    # transformers divides a micro-batch's loss by the accumulation steps only for a model that takes no loss kwargs;
    # BertForSequenceClassification takes **kwargs and never uses them, so with accumulation 3 the Trainer logs
    # 3 x the mean (3 x ln 4 at the start), which read as an explosion and stopped a healthy run at its first eval
    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append)
    out, trainer = _bert_trainer(tmp_path, lr=5e-3, steps=20, peft=False, callbacks=[cb], eval_steps=5, accum=3,
                                 save=False)
    first = next(e["loss"] for e in trainer.state.log_history if "loss" in e)
    assert first > 2.5 * math.log(4)  # what the Trainer logged: the sum of three means
    assert trainer.state.global_step == 20 and cb.stopped_by is None and not any("diverged" in m for m in said)
    record = json.loads((out / "loratune" / "run.json").read_text())
    assert record["train_loss_scale"]["factor"] == pytest.approx(1 / 3) and record["status"] == "completed"
    history = [json.loads(x) for x in (out / "loratune" / "history.jsonl").read_text().splitlines()]
    assert history[0]["train/loss"] < 1.2 * math.log(4)  # read as the mean


def test_a_classifier_logging_an_entropy_metric_is_no_trl_run_and_its_summed_losses_are_still_read_as_means(tmp_path):
    # a plain Trainer's tiny BERT whose compute_metrics also returns `entropy` (TRL's SFTTrainer logs one too): its log
    # read as a TRL SFT log, so the callback dropped its loss scale (the record's first train loss 4.169, 3 x ln 4, a
    # sum) and the directory reader skipped its summed-loss check and class count
    import shutil

    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append)
    out, trainer = _bert_trainer(tmp_path, lr=5e-3, steps=20, peft=False, callbacks=[cb], eval_steps=5, accum=3,
                                 entropy=True)
    assert any("eval_entropy" in e for e in trainer.state.log_history)
    assert next(e["loss"] for e in trainer.state.log_history if "loss" in e) > 2.5 * math.log(4)
    record = json.loads((out / "loratune" / "run.json").read_text())
    assert record["train_loss_scale"]["factor"] == pytest.approx(1 / 3) and "trl_kind" not in record
    history = [json.loads(x) for x in (out / "loratune" / "history.jsonl").read_text().splitlines()]
    assert history[0]["train/loss"] < 1.2 * math.log(4) and cb.stopped_by is None
    bare = tmp_path / "state_only"  # the checkpoint's trainer_state.json alone: the directory reader
    bare.mkdir()
    shutil.copy(out / "checkpoint-20" / "trainer_state.json", bare / "trainer_state.json")
    h = load_run(bare)  # no model card: the accumulation steps unknown, the sum is seen and kept as logged
    assert h.source == "hf-trainer" and "trl_kind" not in h.meta and h.meta.get("task") != "causal-lm"
    assert h.meta["train_loss_summed"]["ratio"] == pytest.approx(3.0, abs=0.05)
    assert any(p["val/entropy"] > 0 for p in h.points if "val/entropy" in p)


def test_the_corrected_record_is_read_before_the_trainers_state_and_show_reads_a_record_only_folder(tmp_path,
                                                                                                     capsys):
    """With accumulation 3 and save_state(), `diagnose OUTPUT_DIR` read the Trainer's summed losses (3 x ln 4) and
    said diverged; a folder holding only the record was refused by show and report."""
    from loratune.cli import main
    from loratune.integrations import LoratuneCallback

    out, trainer = _bert_trainer(tmp_path, lr=5e-3, steps=20, peft=False, eval_steps=5, accum=3, save=False,
                                 callbacks=[LoratuneCallback(printer=lambda s: None)])
    assert main(["show", str(out)]) == 0 and main(["report", str(out), "-o", str(tmp_path / "r.html")]) == 0
    trainer.save_state()  # trainer_state.json at the top, with the summed losses
    h = load_run(out)
    assert h.source != "hf-trainer" and any("accumulation" in n for n in h.notes)
    assert h.points[0]["train/loss"] < 1.2 * math.log(4) and diagnose(out).verdict != "diverged"


def test_a_callback_passed_to_a_second_training_starts_it_afresh(tmp_path):
    from loratune.integrations import LoratuneCallback

    cb = LoratuneCallback(printer=lambda s: None)
    _bert_trainer(tmp_path / "a", lr=30.0, steps=20, peft=False, eval_steps=5, accum=3, save=False, callbacks=[cb])
    assert cb.stopped_by == "diverged"
    out, _ = _bert_trainer(tmp_path / "b", lr=5e-3, steps=10, eval_steps=5, save=False, callbacks=[cb])
    record = json.loads((out / "loratune" / "run.json").read_text())
    assert cb.stopped_by is None and record["status"] == "completed" and record.get("train_loss_scale") is None


def test_a_trainer_folder_with_only_the_callbacks_record_is_read_through_it(tmp_path):
    # save_strategy='no' writes no trainer_state.json: `loratune diagnose OUTPUT_DIR` found nothing to read
    from loratune.integrations import LoratuneCallback

    out, trainer = _bert_trainer(tmp_path, lr=5e-3, steps=10, callbacks=[LoratuneCallback(printer=lambda s: None)],
                                 eval_steps=5, save=False)
    assert not (out / "trainer_state.json").exists()
    h = load_run(out)
    assert [p["step"] for p in h.points] == [5, 10] and any("callback's record" in n for n in h.notes)


@pytest.mark.parametrize("at, status", [(15, "completed"), (10, "stopped")])
def test_a_stop_at_the_last_planned_step_leaves_a_completed_record(tmp_path, at, status):
    from types import SimpleNamespace

    from loratune.integrations import LoratuneCallback

    log = [e for e in _pinned_at_start(3, 5) if e["step"] <= at]
    state = SimpleNamespace(max_steps=15, num_train_epochs=1, train_batch_size=8, logging_steps=5, eval_steps=5,
                            save_steps=500, global_step=at, log_history=log, is_world_process_zero=True)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    cb = LoratuneCallback(printer=lambda s: None)
    cb.on_train_begin(args, state, control)
    cb.stopped_by = "collapse"  # the callback stopped the run at step `at` of 15
    cb.on_train_end(args, state, control)
    record = json.loads((tmp_path / "loratune" / "run.json").read_text())
    assert record["status"] == status and record["stopped_by"] == "collapse"


# ---- the callback inside a user's training: faults and edge cases ----------------------------------------------

def test_a_nan_the_trainer_logs_as_loss_0_stops_the_run_and_is_never_recorded_as_0(tmp_path):
    # logging_nan_inf_filter (the default) logs a NaN step's loss as the mean of the finite ones since the last log:
    # 0 here, grad_norm nan beside it. The run went on to its first eval (or its end), recorded `completed` at 0.0
    from loratune.history_io import history_from_trainer_state
    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append)
    out, trainer = _bert_trainer(tmp_path, lr=1e8, steps=20, peft=False, callbacks=[cb], eval_steps=20, save=False)
    assert any(e.get("loss") == 0 and math.isnan(e.get("grad_norm", 0.0)) for e in trainer.state.log_history)
    assert cb.stopped_by == "diverged" and trainer.state.global_step < 5
    assert any("gradient norm is nan" in m for m in said)
    assert json.loads((out / "loratune" / "run.json").read_text())["status"] == "diverged"
    log = [{"step": 1, "loss": 1.39, "grad_norm": 3.0}, {"step": 1, "eval_loss": 1.4},
           {"step": 2, "loss": 0.0, "grad_norm": float("nan")},
           {"step": 2, "eval_loss": 1.5}, {"step": 3, "loss": 0.0, "grad_norm": 0.5}, {"step": 3, "eval_loss": 1.4}]
    run = history_from_trainer_state({"log_history": log, "max_steps": 3}, tmp_path, name="x")
    assert run.points[1]["train/loss"] is None  # non-finite, as the rules read null
    assert run.points[2]["train/loss"] == 0.0  # a real 0 (a finite gradient beside it) stays


def _fake_diagnosis(rule_ids):
    from types import SimpleNamespace

    active = [SimpleNamespace(rule_id=r, tentative=False, confidence=0.9, route=("a reading",), verdict=r,
                              moves=("a move",)) for r in rule_ids]
    return SimpleNamespace(active=active, verdict=rule_ids[0] if rule_ids else "healthy", finding=lambda r: None)


def test_overfit_patience_counts_evaluations_not_eval_sets(tmp_path, monkeypatch):
    # with eval_dataset={"val": ..., "train": ...} the Trainer calls on_evaluate once per set at the same step:
    # overfit_patience=2 stopped after two evaluations, saying "3 evaluations in a row"
    from types import SimpleNamespace

    import loratune.integrations.trainer as T
    from loratune.integrations import LoratuneCallback

    monkeypatch.setattr(T, "diagnose", lambda *a, **k: _fake_diagnosis(["overfit-capacity"]))
    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, record=False, overfit_patience=2)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(args, None, control)
    stopped_at = None
    for step in (5, 10, 15, 20):
        for _ in ("val", "train"):
            state = SimpleNamespace(max_steps=40, global_step=step, log_history=[], is_world_process_zero=True)
            cb.on_evaluate(args, state, control)
        if control.should_training_stop:
            stopped_at = step
            break
    assert stopped_at == 15 and cb.stopped_by == "overfit"
    assert said[-1].endswith("overfit-capacity at 3 evaluations in a row (patience 2)")
    assert sum("overfit-capacity -" in m for m in said) == 1


def test_the_first_evaluation_of_named_eval_sets_is_judged_on_every_set(tmp_path, monkeypatch):
    # eval_dataset={"heldout": ..., "train": ...}: at the first evaluation the callback acted on the first set's call,
    # a point without the second set's metrics (how many sets there are shows only when the next step begins)
    from types import SimpleNamespace

    import loratune.integrations.trainer as T
    from loratune.integrations import LoratuneCallback

    # a reading that holds on the partial point (held-out set only) and not on the whole one
    monkeypatch.setattr(T, "diagnose", lambda points, **k: _fake_diagnosis(
        ["overfit-capacity"] if points[-1].get("train_eval/loss") is None else []))
    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, record=False, overfit_patience=0)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    log: list[dict] = []
    state = SimpleNamespace(max_steps=20, num_train_epochs=1, train_batch_size=8, logging_steps=5, eval_steps=5,
                            save_steps=500, global_step=0, log_history=log, is_world_process_zero=True)
    cb.on_train_begin(args, state, control)
    for step in (5, 10):
        state.global_step = step
        log.append({"step": step, "epoch": step / 20, "loss": 1.0 / step})
        for name, loss in (("heldout", 0.9), ("train", 0.5)):
            metrics = {f"eval_{name}_loss": loss, f"eval_{name}_runtime": 0.1, "epoch": step / 20}
            log.append({"step": step, **metrics})
            cb.on_evaluate(args, state, control, metrics=metrics)
        assert not said and not control.should_training_stop, (step, said)
        cb.on_step_begin(args, state, control)
        assert not said and not control.should_training_stop, (step, said)
    cb.on_train_end(args, state, control)
    assert not said and cb.stopped_by is None
    # a single unnamed set is acted on at its call, as before (no step needs to begin)
    monkeypatch.setattr(T, "diagnose", lambda points, **k: _fake_diagnosis(["overfit-capacity"]))
    cb = LoratuneCallback(printer=said.append, record=False, overfit_patience=0)
    cb.on_train_begin(args, state, control)
    cb.on_evaluate(args, state, control, metrics={"eval_loss": 0.9, "eval_runtime": 0.1})
    assert control.should_training_stop and cb.stopped_by == "overfit"


def test_a_stop_at_a_first_evaluation_of_named_sets_lands_when_the_next_step_begins(tmp_path, monkeypatch):
    # in a real Trainer: the deferred evaluation is acted on at on_step_begin, and the Trainer honours the stop at the
    # end of that step (one step after the evaluation; a single unnamed set stops at the evaluation itself)
    import loratune.integrations.trainer as T
    from loratune.integrations import LoratuneCallback

    monkeypatch.setattr(T, "diagnose", lambda *a, **k: _fake_diagnosis(["overfit-capacity"]))
    cb = LoratuneCallback(printer=lambda s: None, record=False, overfit_patience=0)
    _, trainer = _bert_trainer(tmp_path / "named", lr=3e-3, steps=20, eval_steps=5, save=False, eval_name="heldout",
                               callbacks=[cb])
    assert cb.stopped_by == "overfit" and trainer.state.global_step == 6
    cb = LoratuneCallback(printer=lambda s: None, record=False, overfit_patience=0)
    _, trainer = _bert_trainer(tmp_path / "plain", lr=3e-3, steps=20, eval_steps=5, save=False, callbacks=[cb])
    assert cb.stopped_by == "overfit" and trainer.state.global_step == 5


def test_a_collapse_reading_on_a_loss_at_new_lows_is_not_said(tmp_path):
    # the collapse hold was skipped at an evaluation whose val loss set a new low: lr-too-large / collapsed printed
    # on a run that was learning (and never stopped, so the message was a false alarm)
    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, record=False, collapse_hold=1.0)
    control, at = _evaluate_each(cb, _pinned_at_start(40, 1, creep=1e-4), 100, tmp_path)
    assert at is None and cb.stopped_by is None
    assert not any(" collapsed - " in m or " lr-too-large - " in m for m in said), said


def test_a_live_callback_record_reads_running_and_its_end_completed(tmp_path):
    # the record said `running` with no run.lock: diagnose/show read the live run as `died` (partial)
    from types import SimpleNamespace

    from loratune.integrations import LoratuneCallback

    log = _pinned_at_start(3, 5)
    state = SimpleNamespace(max_steps=15, num_train_epochs=1, train_batch_size=8, logging_steps=5, eval_steps=5,
                            save_steps=500, global_step=10, log_history=log[:4], is_world_process_zero=True)
    args, control = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(should_training_stop=False)
    cb = LoratuneCallback(printer=lambda s: None)
    cb.on_train_begin(args, state, control)
    cb.on_evaluate(args, state, control)
    live = load_run(tmp_path / "loratune")
    assert live.meta["status"] == "running" and not live.meta.get("partial")
    state.global_step, state.log_history = 15, log
    cb.on_train_end(args, state, control)
    done = load_run(tmp_path / "loratune")
    assert done.meta["status"] == "completed" and not (tmp_path / "loratune" / "run.lock").exists()


@pytest.mark.parametrize("options, names", [
    ({"thresholds": {"diverged_loss_ratio": "3"}}, "thresholds"),
    ({"overfit_patience": "2"}, "overfit_patience"),
    ({"overfit_patience": 1.5}, "overfit_patience"),
    ({"collapse_hold": "0.2"}, "collapse_hold"),
    ({"min_confidence": 5}, "min_confidence"),
])
def test_callback_options_are_checked_when_it_is_made(options, names):
    # a non-numeric threshold was accepted, then ended the user's training at its first evaluation
    from loratune.integrations import LoratuneCallback

    with pytest.raises(ValueError, match=names):
        LoratuneCallback(**options)


def test_a_failing_record_or_diagnosis_warns_once_and_never_ends_the_training(tmp_path, monkeypatch):
    import errno

    import loratune.integrations.trainer as T
    from loratune.integrations import LoratuneCallback

    real, writes = T._write_record, []

    def full_disk(folder, points, meta):
        writes.append(meta["status"])
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(folder, points, meta)

    monkeypatch.setattr(T, "_write_record", full_disk)
    said: list[str] = []
    cb = LoratuneCallback(printer=said.append, stop_on=())
    control, at = _evaluate_each(cb, _pinned_at_start(6, 5), 30, tmp_path)
    assert at is None and len(writes) == 6
    warnings = [m for m in said if "warning" in m]
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    monkeypatch.setattr(T, "diagnose", lambda *a, **k: 1 / 0)
    said.clear()
    control, at = _evaluate_each(cb, _pinned_at_start(3, 5), 30, tmp_path)
    assert at is None and len(said) == 1 and "ZeroDivisionError" in said[0]


def test_a_checkpoint_of_a_run_with_accumulation_reads_the_callbacks_loss_scale(tmp_path):
    # `loratune diagnose OUT/checkpoint-N` read the Trainer's summed losses (3 x ln 4) as diverged, although the
    # callback's record in OUT says they are sums over gradient accumulation
    from loratune.integrations import LoratuneCallback

    out, _ = _bert_trainer(tmp_path, lr=5e-3, steps=10, peft=False, eval_steps=5, accum=3,
                           callbacks=[LoratuneCallback(printer=lambda s: None)])
    for where in (out / "checkpoint-10", out / "checkpoint-10" / "trainer_state.json"):
        h = load_run(where)
        assert h.points[0]["train/loss"] < 1.2 * math.log(4) and any("accumulation" in n for n in h.notes)
        assert diagnose(h).verdict != "diverged"


def test_a_loratune_run_and_trainer_runs_adapting_the_same_modules_are_one_group(tmp_path, tiny_bert, intent_data):
    """peft matches a target name as a suffix of the module path: a loratune run's resolved paths
    (bert.encoder.layer.N.attention.self.query, every layer) and a Trainer run's `query` adapt the same modules, so
    the runs differ in the learning rate alone (README: any mix of sources)."""
    from loratune import api
    from loratune.config import load_config
    from loratune.diagnose import knob_view

    from support import overrides

    lt = tmp_path / "lt"
    api.train(load_config(None, overrides(tiny_bert, intent_data, lt, learning_rate=5e-2, max_steps=10, eval_steps=5,
                                          lora_dropout=0.0)), progress=False)
    low, _ = _bert_trainer(tmp_path / "low", lr=2e-2, steps=10)
    high, _ = _bert_trainer(tmp_path / "high", lr=1e-1, steps=10)
    assert load_run(lt).facts["target_modules"].value[0].startswith("bert.encoder.layer.")
    assert knob_view(load_run(lt))["adapter.target_modules"] == ("query", "value")
    assert knob_view(load_run(high))["adapter.target_modules"] == ("query", "value")
    c = compare([low, lt, high])
    (g,) = [g for g in c.groups if g.knob == "learning_rate"]
    assert [row[1] for row in g.runs] == [pytest.approx(2e-2, rel=0.02), 5e-2, pytest.approx(1e-1, rel=0.02)]
    assert g.runs[1][0] == "lt" and len(c.runs) == 3


def test_trainer_runs_compared_on_val_loss_show_the_losses_themselves(tmp_path):
    """A run without compute_metrics puts the comparison on the lowest val loss: the rows hold each run's lowest val
    loss itself (lower is better), not its negation, and the best run is the lowest."""
    nm, _ = _bert_trainer(tmp_path / "nm", lr=5e-2, steps=20, metrics=False)
    r4, _ = _bert_trainer(tmp_path / "r4", lr=5e-2, steps=20)
    r8, _ = _bert_trainer(tmp_path / "r8", lr=5e-2, steps=20, r=8)
    c = compare([nm, r4, r8])
    assert c.measure == "lowest val loss" and c.to_dict()["better"] == "lower"
    (g,) = [g for g in c.groups if g.knob == "r" and len(g.runs) == 3]
    lowest = sorted(min(q["val/loss"] for q in load_run(p).points if "val/loss" in q) for p in (nm, r4, r8))
    assert sorted(row[2] for row in g.runs) == pytest.approx(lowest)
    assert g.best()[2] == pytest.approx(lowest[0])


def test_a_trainer_runs_summed_losses_are_read_as_means_when_its_model_card_names_the_accumulation(tmp_path):
    """No callback: with accumulation 3 the Trainer logged 3 x ln 4, read as diverged and a class count of ~64. Its
    model card (create_model_card) lists gradient_accumulation_steps: 3, and the first loss is 3 x the first eval's."""
    out, trainer = _bert_trainer(tmp_path, lr=5e-3, steps=10, peft=False, eval_steps=5, accum=3, save=False)
    trainer.save_state()
    h = load_run(out)
    assert h.points[0]["train/loss"] > 2.5 * math.log(4) and h.meta["train_loss_summed"]["ratio"] > 2.5
    assert "n_classes" not in h.facts and diagnose(h).verdict != "diverged"  # no card: kept, but not read as sums
    trainer.create_model_card()
    h = load_run(out)
    assert h.points[0]["train/loss"] < 1.2 * math.log(4) and h.meta["train_loss_scale"]["factor"] == 1 / 3
    assert any("gradient_accumulation_steps: 3" in n for n in h.notes) and h.facts["n_classes"].value == 4
    assert diagnose(h).verdict != "diverged"


# ---- the callback's record read back ------------------------------------------------------------------

def test_callback_records_keep_their_config_facts_and_name_and_compare_by_knob(tmp_path):
    # the callback writes its knobs and facts into run.json (no config.yaml, no adapter/): read as a config
    # they join a learning_rate comparison with binomial noise; read as a `loratune train` run they had none, were
    # all named `loratune`, and the noise line blamed a val size every point logs
    from loratune.integrations import LoratuneCallback

    outs = []
    for lr in (1e-3, 5e-3, 2e-2):
        out, _ = _bert_trainer(tmp_path / f"lr{lr}", lr=lr, steps=10, save=False,
                               callbacks=[LoratuneCallback(printer=lambda *_: None)])
        outs.append(out)
    run = load_run(outs[1])
    assert run.name == "out" and run.source == "hf-trainer callback"
    assert run.config["train"]["learning_rate"] == 5e-3 and run.config["adapter"]["r"] == 4
    assert run.facts["r"].value == 4 and run.facts["val_n"].value == 20
    assert load_run(outs[1] / "loratune").name == "out"  # the record folder given itself
    assert diagnose(outs[1]).facts["lora_alpha"]["value"] == 8
    c = compare(outs)
    assert not any("left out" in n for n in c.notes)
    (g,) = [g for g in c.groups if g.knob == "learning_rate"]
    assert [r[1] for r in g.runs] == [1e-3, 5e-3, 2e-2]
    assert c.features.details["noise_source"].startswith("binomial standard error from val size")


def test_a_callback_record_reports_its_status_method_and_facts_not_a_loratune_train_runs(tmp_path, capsys):
    from loratune.cli import main
    from loratune.integrations import LoratuneCallback
    from loratune.report.model import build_outside_report
    from loratune.report.render import run_summary
    from loratune.store import RunLock

    out, _ = _bert_trainer(tmp_path, lr=5e-3, steps=10, callbacks=[LoratuneCallback(printer=lambda *_: None)])
    (out / "trainer_state.json").unlink(missing_ok=True)  # (the run folder as a save_strategy='no' run leaves it)
    r = build_outside_report(out)
    assert (r.status, r.method, r.source) == ("completed", "lora", "hf-trainer callback")
    assert {p.key: p.value for p in r.params}["r"] == 4
    assert "at its first eval" in run_summary(r) and "step 0" not in run_summary(r)
    assert "recorded by LoratuneCallback" in r.notes[0]
    assert main(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "completed" in shown and "lora" in shown and "no model saved" not in shown
    # a record still training (its lock held) is running, not finished; once nothing holds the lock, died
    rec = out / "loratune"
    meta = json.loads((rec / "run.json").read_text())
    (rec / "run.json").write_text(json.dumps({**meta, "status": "running", "steps_done": 5}))
    lock = RunLock(rec)
    lock.acquire()
    try:
        r = build_outside_report(out)
        assert (r.status, r.steps_done) == ("running", 5)
    finally:
        lock.release()
    assert build_outside_report(out).status == "died"


def _ctrl_c_at(step: int):
    from transformers import TrainerCallback

    class CtrlC(TrainerCallback):  # stands in for a Ctrl-C pressed in a notebook
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise KeyboardInterrupt

    return CtrlC()


def test_a_ctrl_c_inside_train_marks_the_record_interrupted_and_frees_its_lock(tmp_path, monkeypatch):
    import time

    import loratune.integrations.trainer as cbmod
    from loratune.integrations import LoratuneCallback
    from loratune.store import liveness

    monkeypatch.setattr(cbmod, "WATCH_S", 0.05, raising=False)
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):  # the Trainer never calls on_train_end: train() raised
        _bert_trainer(tmp_path, lr=5e-3, steps=20, save=False,
                      callbacks=[LoratuneCallback(printer=said.append), _ctrl_c_at(12)])
    rec = tmp_path / "out" / "loratune"
    for _ in range(100):  # the watch thread sees the training loop gone from the training thread's stack
        meta = json.loads((rec / "run.json").read_text())
        if meta["status"] != "running":
            break
        time.sleep(0.05)
    assert (meta["status"], meta["steps_done"]) == ("interrupted", 12) and "step 12" in meta["reason"]
    # its facts say the same step count (they said 10, the live state's at its last evaluation)
    assert meta["facts"]["steps_done"]["value"] == 12 and load_run(rec).facts["steps_done"].value == 12
    assert diagnose(rec).facts["steps_done"]["value"] == 12
    # and its curve goes on past the last evaluation (step 10) to the last train loss logged (step 12's never was)
    assert json.loads((rec / "history.jsonl").read_text().splitlines()[-1])["step"] == 11
    assert not (rec / "run.lock").exists() and liveness(rec)[0] == "dead"
    # the kernel lives on and trains again into the same folder: no warning of "another process" (its own pid)
    _bert_trainer(tmp_path, lr=5e-3, steps=10, save=False, callbacks=[LoratuneCallback(printer=said.append)])
    assert not any("warning" in m for m in said), said
    assert json.loads((rec / "run.json").read_text())["status"] == "completed"


def test_a_run_abandoned_before_its_watch_fired_is_ended_by_the_next_run_or_the_exit(tmp_path, monkeypatch):
    import loratune.integrations.trainer as cbmod
    from loratune.integrations import LoratuneCallback

    monkeypatch.setattr(cbmod, "WATCH_S", 3600.0, raising=False)  # the watch never fires here: the next run takes over
    said: list[str] = []
    first = LoratuneCallback(printer=said.append)
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, lr=5e-3, steps=20, save=False, callbacks=[first, _ctrl_c_at(12)])
    rec = tmp_path / "out" / "loratune"
    assert json.loads((rec / "run.json").read_text())["status"] == "running"
    cbmod._end_abandoned_runs()  # what the interpreter's exit runs
    meta = json.loads((rec / "run.json").read_text())
    assert (meta["status"], meta["steps_done"]) == ("interrupted", 12)
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, lr=5e-3, steps=20, save=False, callbacks=[LoratuneCallback(printer=said.append),
                                                                         _ctrl_c_at(12)])
    second = LoratuneCallback(printer=said.append)
    _bert_trainer(tmp_path, lr=5e-3, steps=10, save=False, callbacks=[second])
    assert not any("warning" in m for m in said), said
    assert json.loads((rec / "run.json").read_text())["status"] == "completed" and second._lock is None


def test_two_callbacks_in_one_trainer_share_the_run_without_a_false_warning(tmp_path):
    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    a, b = LoratuneCallback(printer=said.append), LoratuneCallback(printer=said.append)
    out, _ = _bert_trainer(tmp_path, lr=5e-3, steps=10, save=False, callbacks=[a, b])
    assert not any("warning" in m for m in said), said
    assert json.loads((out / "loratune" / "run.json").read_text())["status"] == "completed"
    assert not (out / "loratune" / "run.lock").exists() and a._lock is None and b._lock is None


def _two_runs_into_one_folder(tmp_path):
    """Run 1 (callback, accumulation 3) then run 2 into the same output_dir without the callback."""
    from loratune.integrations import LoratuneCallback

    _bert_trainer(tmp_path, lr=5e-3, steps=10, peft=False, accum=3,
                  callbacks=[LoratuneCallback(printer=lambda s: None)])
    return _bert_trainer(tmp_path, lr=5e-3, steps=20, peft=False)


def test_an_earlier_runs_record_is_not_read_as_the_later_run_in_its_folder(tmp_path):
    # the folder read the old record (10 steps), the later run's checkpoint-20 ignored and unmentioned
    out, _ = _two_runs_into_one_folder(tmp_path)
    run = load_run(out)
    assert run.source == "hf-trainer" and run.points[-1]["step"] == 20 and run.meta["steps_planned"] == 20
    assert any("older than checkpoint-20/trainer_state.json" in n and "plans 10 steps" in n for n in run.notes)


def test_an_earlier_runs_record_does_not_scale_a_later_runs_checkpoint(tmp_path):
    # checkpoint-20 got the old record's 1/3 loss scale: its train losses read 3x too low
    out, trainer = _two_runs_into_one_folder(tmp_path)
    ckpt = load_run(out / "checkpoint-20")
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e][:5]
    assert ckpt.points[0]["train/loss"] == pytest.approx(sum(logged) / 5)  # as logged: no accumulation in run 2
    assert any("of another run" in n for n in ckpt.notes) and not any("x 0.333" in n for n in ckpt.notes)


def test_a_new_training_moves_the_earlier_runs_record_aside_before_its_first_evaluation(tmp_path):
    # a second run interrupted before its first evaluation left `completed 10/10` with the first run's pid
    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    out, _ = _bert_trainer(tmp_path, lr=5e-3, steps=10, save=False, callbacks=[LoratuneCallback(printer=said.append)])
    first = json.loads((out / "loratune" / "run.json").read_text())
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, lr=5e-3, steps=20, save=False,
                      callbacks=[LoratuneCallback(printer=said.append), _ctrl_c_at(3)])
    assert not (out / "loratune" / "run.json").exists() and not (out / "loratune" / "history.jsonl").exists()
    kept = json.loads((out / "loratune-previous" / "run.json").read_text())
    assert kept == first
    # a third run: the second leftover gets its own name, the first is kept
    _bert_trainer(tmp_path, lr=5e-3, steps=10, save=False, callbacks=[LoratuneCallback(printer=said.append)])
    assert json.loads((out / "loratune" / "run.json").read_text())["status"] == "completed"
    assert json.loads((out / "loratune-previous" / "run.json").read_text()) == first


def test_a_short_accumulation_window_is_read_over_the_micro_batches_it_holds(tmp_path):
    # 6 batches per epoch, accumulation 4: each epoch's second step sums 2 micro-batch means, not 4; dividing it by 4
    # read those steps' losses half as high
    from loratune.integrations import LoratuneCallback
    from loratune.history_io import history_from_trainer_state

    out, trainer = _bert_trainer(tmp_path, lr=5e-3, steps=10, peft=False, eval_steps=5, accum=4,
                                 callbacks=[LoratuneCallback(printer=lambda s: None)])
    assert len(trainer.get_train_dataloader()) == 6
    log = trainer.state.log_history
    means = [{**e, "loss": e["loss"] / (2 if e["step"] % 2 == 0 else 4)} if "loss" in e else e for e in log]
    assert all(0.7 * math.log(4) < e["loss"] < 1.3 * math.log(4) for e in means if "loss" in e)
    want = history_from_trainer_state({"log_history": means}, out, name="x").points
    history = [json.loads(x) for x in (out / "loratune" / "history.jsonl").read_text().splitlines()]
    assert [p["train/loss"] for p in history] == pytest.approx([p["train/loss"] for p in want])
    ckpt = load_run(out / "checkpoint-10")  # the checkpoint's state read with the record's windows
    assert [p["train/loss"] for p in ckpt.points] == pytest.approx([p["train/loss"] for p in want])
    record = json.loads((out / "loratune" / "run.json").read_text())
    assert (record["train_loss_scale"]["accumulation"], record["train_loss_scale"]["batches_per_epoch"]) == (4, 6)


@pytest.mark.parametrize("per_label, batches, short, windows", [
    (12, 6, 2, 5),  # each epoch a step of 4 micro-batches, then one of 2 (epochs 0.666..., 1.0)
    # exact epochs that print short: 80 rows, steps of 4, 4, 2 (epochs 0.4, 0.8, 1.0): the short step went unseen,
    # read 'rounded to 0.1'; 40 rows, steps of 4, 1 (0.8, 1.0): called too coarse to size
    (20, 10, 2, 3),
    (10, 5, 1, 5),
])
def test_a_trainer_states_short_accumulation_windows_are_read_over_their_micro_batches_from_the_logged_epochs(
        tmp_path, per_label, batches, short, windows):
    # no callback, no model card: the run's trainer_state.json. Its short windows were read as sums of 4 like the rest
    # (a flat loss 'fell' by a share of each epoch); the logged epochs size them
    from loratune.history_io import history_from_trainer_state

    out, trainer = _bert_trainer(tmp_path, lr=5e-3, steps=10, peft=False, eval_steps=5, accum=4, save=False,
                                 per_label=per_label)
    trainer.save_state()
    assert len(trainer.get_train_dataloader()) == batches
    per_epoch = -(-batches // 4)  # its last step holds `short` micro-batches
    # every window a sum of 4 (the epochs left out: nothing to size again)
    sums = [{k: v for k, v in e.items() if k != "epoch"} | ({"loss": e["loss"] * 4 / short}
                                                            if e["step"] % per_epoch == 0 else {})
            if "loss" in e else e for e in trainer.state.log_history]
    want = history_from_trainer_state({"log_history": sums}, tmp_path, name="x").points
    h = load_run(out)
    assert "train_loss_scale" not in h.meta and h.meta["train_loss_summed"]["factor"] is None
    assert any(f"{windows} window(s) holding an epoch's shorter last step (down to {short / 4:.0%}" in n
               for n in h.notes)
    assert [p["train/loss"] for p in h.points] == pytest.approx([p["train/loss"] for p in want])


def test_the_callbacks_record_keeps_the_notes_of_its_reading(tmp_path):
    # two named eval sets and none a validation set: the checkpoint said why no curve rule could fire, the record not
    from loratune.integrations import LoratuneCallback

    out, _ = _bert_trainer(tmp_path, lr=5e-3, steps=10, two_sets=True,
                           callbacks=[LoratuneCallback(printer=lambda s: None)])
    said = [n for n in load_run(out / "checkpoint-10").notes if "2 eval sets under their own names" in n]
    assert said and set(said) <= set(load_run(out).notes) and set(said) <= set(diagnose(out).notes)


def test_resuming_the_records_own_run_keeps_its_record(tmp_path):
    # the resume moved the run's own record to loratune-previous: the folder read checkpoint-10's summed losses
    # (3 x ln 4), its interrupted status lost, and each resume left another copy
    from loratune.integrations import LoratuneCallback

    said: list[str] = []
    kw = dict(lr=5e-3, steps=30, peft=False, accum=3, eval_steps=5, save_steps=5)
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, callbacks=[LoratuneCallback(printer=said.append), _ctrl_c_at(12)], **kw)
    out = tmp_path / "out"
    before = [p["train/loss"] for p in load_run(out).points]
    with pytest.raises(KeyboardInterrupt):  # resumed from checkpoint-10, stopped before its next evaluation (15)
        _bert_trainer(tmp_path, callbacks=[LoratuneCallback(printer=said.append), _ctrl_c_at(13)], resume=True, **kw)
    assert sorted(x.name for x in out.iterdir() if x.name.startswith("loratune")) == ["loratune"]
    run = load_run(out)
    assert run.source == "hf-trainer callback" and (run.meta["status"], run.meta["steps_done"]) == ("interrupted", 12)
    losses = [p["train/loss"] for p in run.points]  # (the interruption added step 12's train loss to the curve)
    assert losses[:len(before)] == pytest.approx(before) and len(before) == 2
    assert all(0.7 * math.log(4) < x < 1.3 * math.log(4) for x in losses)  # means, not sums over 3 micro-batches
    assert not any("warning" in m for m in said), said


def test_resuming_the_records_own_run_from_a_checkpoint_before_its_first_evaluation_keeps_the_record(tmp_path):
    # checkpoint-4 predates the record's first evaluation (step 5): the two shared no evaluation, and the resume moved
    # its own run's record aside (each resume another copy)
    from loratune.integrations import LoratuneCallback

    kw = dict(lr=5e-3, steps=30, peft=False, accum=3, eval_steps=5, save_steps=4)
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, callbacks=[LoratuneCallback(printer=lambda s: None), _ctrl_c_at(6)], **kw)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, callbacks=[LoratuneCallback(printer=lambda s: None), _ctrl_c_at(7)], resume=True, **kw)
    assert sorted(x.name for x in out.iterdir() if x.name.startswith("loratune")) == ["loratune"]
    assert load_run(out).source == "hf-trainer callback"


def test_resuming_another_run_of_the_same_length_moves_the_earlier_record_aside(tmp_path):
    # run 2 (no callback, the same max_steps) resumed with the callback before its first evaluation: nothing in the
    # earlier run's record disagreed with its checkpoint (no shared evaluation), so run 1's `completed` record was kept
    # and read as run 2's
    import shutil

    from loratune.integrations import LoratuneCallback

    _bert_trainer(tmp_path, lr=5e-3, steps=10, eval_steps=5, callbacks=[LoratuneCallback(printer=lambda s: None)])
    out = tmp_path / "out"
    first = json.loads((out / "loratune" / "run.json").read_text())
    assert first["status"] == "completed"
    for c in out.glob("checkpoint-*"):
        shutil.rmtree(c)
    kw = dict(lr=1e-1, steps=10, eval_steps=5, save_steps=3)
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, callbacks=[_ctrl_c_at(4)], **kw)
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, callbacks=[LoratuneCallback(printer=lambda s: None), _ctrl_c_at(4)], resume=True, **kw)
    assert json.loads((out / "loratune-previous" / "run.json").read_text()) == first
    assert not (out / "loratune" / "run.json").exists()  # run 2 stopped before its first evaluation: no record yet
    assert load_run(out).source == "hf-trainer"  # its checkpoint, not run 1's record


def test_a_resumed_runs_end_train_loss_is_read_over_the_micro_batches_since_its_resume(tmp_path, monkeypatch):
    # 6 batches per epoch, accumulation 4, resumed from checkpoint-3: the Trainer's train_loss sums steps 4-6 (8
    # micro-batch means) over 3 steps; it was read as if over steps 1-6 (x 6/18, 1.23 for 1.39)
    import transformers

    from loratune.history_io import scaled_log_history
    from loratune.integrations import LoratuneCallback

    kw = dict(lr=5e-3, epochs=3, peft=False, accum=4, eval_steps=3, save_steps=3)
    with pytest.raises(KeyboardInterrupt):
        _bert_trainer(tmp_path, callbacks=[LoratuneCallback(printer=lambda s: None), _ctrl_c_at(4)], **kw)
    micro: list[float] = []  # the resumed run's micro-batch losses, as the model returned them
    compute_loss = transformers.Trainer.compute_loss

    def spy(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        r = compute_loss(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if model.training:
            micro.append(float((r[0] if return_outputs else r).detach()))
        return r

    monkeypatch.setattr(transformers.Trainer, "compute_loss", spy)
    out, trainer = _bert_trainer(tmp_path, callbacks=[LoratuneCallback(printer=lambda s: None)], resume=True, **kw)
    assert len(micro) == 8  # steps 4 (2 micro-batches: epoch 2's last window), 5 (4) and 6 (2)
    scale = json.loads((out / "loratune" / "run.json").read_text())["train_loss_scale"]
    end = [e for e in scaled_log_history(trainer.state.log_history, scale) if "train_loss" in e]
    assert end[0]["train_loss"] == pytest.approx(sum(micro) / len(micro), rel=1e-4)
    assert (scale.get("start_step"), scale["accumulation"], scale["batches_per_epoch"]) == (3, 4, 6)


def test_callback_records_the_thresholds_its_verdict_was_read_with(tmp_path):
    """LoratuneCallback(thresholds={'few_evals_max': 10}) called a pinned run underfit-capacity in its record while
    `loratune diagnose <out>/loratune` read it with the defaults (collapsed): the record did not say its thresholds.
    It records them as a tune trial does (rules.run_thresholds_entry), and diagnose reads them back, saying so."""
    from loratune.integrations import LoratuneCallback
    from loratune.rules import RUN_THRESHOLDS_KEY

    cb = LoratuneCallback(printer=lambda s: None, stop_on=(), thresholds={"few_evals_max": 10})
    _evaluate_each(cb, _pinned_at_start(6, 5), 30, tmp_path)
    record = json.loads((tmp_path / "loratune" / "run.json").read_text())
    assert record["verdict"] == "underfit-capacity" and record[RUN_THRESHOLDS_KEY] == {"few_evals_max": 10}
    d = diagnose(tmp_path / "loratune")
    assert d.verdict == "underfit-capacity" and d.thresholds_note.startswith("thresholds: the ones this run was judged")
    assert diagnose(tmp_path / "loratune", thresholds={}).verdict == "collapsed"  # the defaults
    # a callback with the defaults records nothing of them
    plain = tmp_path / "plain"
    _evaluate_each(LoratuneCallback(printer=lambda s: None, stop_on=()), _pinned_at_start(6, 5), 30, plain)
    assert RUN_THRESHOLDS_KEY not in json.loads((plain / "loratune" / "run.json").read_text())


def test_a_reward_trainers_losses_with_accumulation_are_means_in_the_callbacks_record_as_in_its_files(tmp_path):
    # RewardTrainer sets loss_is_scaled_for_ga = False (TRL 1.16), so the Trainer divides each micro-batch's loss by
    # the accumulation steps itself and logs means. The callback (a sequence classifier
    # whose forward takes **kwargs) divided them by 3 again: TRL logged 0.95, its record held 0.317 and a
    # train_loss_scale of 1/3, while `diagnose OUTPUT_DIR` read the same log as means
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from loratune.history_io import CALLBACK_RECORD_DIR
    from loratune.integrations import LoratuneCallback

    torch.set_num_threads(1)
    tok = _save_tokenizer(tmp_path / "tok")
    tok.eos_token, tok.pad_token = "[SEP]", "[PAD]"
    rows = make_rows(3, seed=3)
    labels = sorted({r_["label"] for r_ in rows})
    data = Dataset.from_list([{"prompt": r_["text"] + " intent:", "chosen": " " + r_["label"],
                               "rejected": " " + next(x for x in labels if x != r_["label"])} for r_ in rows])
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id, num_labels=1))
    out = tmp_path / "rm"
    args = RewardConfig(output_dir=str(out), max_steps=6, per_device_train_batch_size=2, gradient_accumulation_steps=3,
                        learning_rate=1e-3, eval_strategy="steps", eval_steps=3, logging_steps=1, report_to="none",
                        use_cpu=True, save_strategy="steps", save_steps=6, max_length=32, disable_tqdm=True, seed=0)
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(4)),
                            processing_class=tok, callbacks=[LoratuneCallback(printer=lambda *_: None)])
    trainer.train()
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    record = json.loads((out / CALLBACK_RECORD_DIR / "run.json").read_text())
    assert record["trl_kind"] == "reward-model" and record.get("train_loss_scale") is None
    history = [json.loads(x) for x in (out / CALLBACK_RECORD_DIR / "history.jsonl").read_text().splitlines()]
    recorded = [p["train/loss"] for p in history if "train/loss" in p]
    files = [p["train/loss"] for p in load_run(out / "checkpoint-6").points if "train/loss" in p]
    # each eval point's train loss is the mean of its window's logged losses (steps 1-3 of a log every step), not a third
    assert recorded[0] == pytest.approx(sum(logged[:3]) / 3) and recorded == pytest.approx(files)
