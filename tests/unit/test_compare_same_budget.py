"""Which runs `loratune diagnose A B ...` pairs as a one-knob experiment (protocol 5: one knob changed, same
budget, same task), and the learning rate it reads from a checkpoint's partial log."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from loratune.diagnose import compare
from loratune.history_io import load_run

ADAPTER = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": ["query", "value"],
           "use_rslora": False, "use_dora": False, "bias": "none", "task_type": "SEQ_CLS"}


def trainer_dir(folder: Path, *, lr=2e-4, warmup=0, sched="linear", steps=200, acc_end=0.8, classes=10,
                adapter=None, ckpts=(), first_loss=None, problem_type=None) -> Path:
    """A Trainer output dir: a train log every 5 steps (the Trainer's schedule: linear warm-up, then linear /
    cosine / constant), an eval every 20 steps, config.json and adapter_config.json beside it, and a
    checkpoint-N (its own state, max_steps the run's) for each N in `ckpts`."""
    folder.mkdir(parents=True, exist_ok=True)
    L = first_loss or math.log(classes)

    def lr_at(k):
        if k < warmup:
            return lr * k / warmup
        x = (k - warmup) / (steps - warmup)
        return lr * (1 - x) if sched == "linear" else lr * 0.5 * (1 + math.cos(math.pi * x)) \
            if sched == "cosine" else lr

    log, states = [], {}
    for s in range(5, steps + 1, 5):
        f = s / steps
        log.append({"step": s, "epoch": f * 4, "loss": L * (0.2 + 0.8 * math.exp(-4 * f)), "grad_norm": 1.0,
                    "learning_rate": lr_at(s - 1)})
        if s % 20 == 0:
            log.append({"step": s, "epoch": f * 4, "eval_loss": L * (0.3 + 0.7 * math.exp(-4 * f)),
                        "eval_accuracy": 0.3 + (acc_end - 0.3) * (1 - math.exp(-5 * f)) / (1 - math.exp(-5)),
                        "eval_runtime": 4.0, "eval_samples_per_second": 100.0})
        if s in ckpts:
            states[s] = list(log)
    log.append({"step": steps, "epoch": 4.0, "train_runtime": 10.0, "train_loss": 0.5})

    def state(lg, at):
        return json.dumps({"global_step": at, "max_steps": steps, "num_train_epochs": 4, "train_batch_size": 16,
                           "logging_steps": 5, "eval_steps": 20, "log_history": lg})

    files = {"adapter_config.json": json.dumps({k: v for k, v in {**ADAPTER, **(adapter or {})}.items()
                                                if v is not None})}
    if classes:
        cfg = {"model_type": "bert", "id2label": {str(i): f"c{i}" for i in range(classes)}}
        files["config.json"] = json.dumps({**cfg, **({"problem_type": problem_type} if problem_type else {})})
    for sub, text in [(folder, state(log, steps))] + [(folder / f"checkpoint-{s}", state(lg, s))
                                                      for s, lg in states.items()]:
        sub.mkdir(exist_ok=True)
        (sub / "trainer_state.json").write_text(text)
        for n, t in files.items():
            (sub / n).write_text(t)
    return folder


def _groups(c):
    return {g.knob: sorted(row[0] for row in g.runs) for g in c.groups}


# ---- 1(a): a checkpoint's lr is read with the schedule's planned end --------------------------------------------

@pytest.mark.parametrize("sched,warmup", [("linear", 0), ("linear", 20), ("cosine", 20)])
@pytest.mark.parametrize("at", [40, 60])
def test_a_checkpoints_partial_lr_log_is_read_with_the_states_max_steps(tmp_path, sched, warmup, at):
    """A checkpoint's log stops at 20-30% of a 200-step decay: fitted over end steps up to 3x its span alone, a
    linear decay read as a cosine (peak 1.96e-4 at checkpoint-60 with warm-up, 2.05e-4 without) and its warm-up as
    24 steps (true 20); the state's max_steps is where the Trainer's schedule ends."""
    run = trainer_dir(tmp_path / "run", lr=2e-4, warmup=warmup, sched=sched, ckpts=(at,))
    f = load_run(run / f"checkpoint-{at}").facts
    assert f["learning_rate"].value == 2e-4 and f["lr_schedule"].value == sched
    assert (f["warmup_steps"].value if warmup else None) == (warmup or None)
