"""Training throughput: loratune vs HF Trainer + peft, side by side, same model, data, configs, examples.

    python bench/throughput.py                # 2 rounds x 2 configs x 3 arms x 80 steps, about 20 min on 2 busy cores
    python bench/throughput.py --steps 40 --rounds 1 --configs a   # a quick look
    python bench/throughput.py --device cuda  # on a GPU: bf16, fused AdamW, MFU (skipped without CUDA)

Arms (each a fresh subprocess, so its peak RSS is its own):
  trainer          transformers Trainer + peft, default TrainingArguments (random batches, padded to
                   the longest in each batch by DataCollatorWithPadding)
  trainer-grouped  the same with length-grouped batches (`group_by_length=True`; transformers >= 5
                   spells it `train_sampling_strategy="group_by_length"`)
  trainer-grouped-bf16  the same with `bf16=True` (the Trainer's CPU autocast): what a careful user sets on a
                   CPU with avx512_bf16 or AMX, where loratune's precision `auto` trains under bf16 autocast
  loratune         loratune's own loop (length-grouped batches, frozen-prefix cache when it applies),
                   evaluated at step 0 (val) and at the end (val + 128 train rows), no slices (the race)
  loratune-cli     the whole process a user times: `loratune train -q` with the config's keys and every
                   other default (evaluation schedule, train_eval_size, slices, robustness probe), timed
                   from process start to exit like every arm (`process_s`); its run.json `timing_s` gives
                   the breakdown (load, tokenize, train, evaluate, extras)
  loratune-cli-fp32  the same with `precision=fp32` (what `auto` runs on a CPU without bf16): the bf16 lever's
                   own gain and its quality parity, seed for seed

Configs: (a) r=8 on attn.q + attn.v in every layer plus ffn (intermediate + output dense) in the top 2;
(b) r=8 on every linear layer of the top 2 blocks only. Both: lora_alpha 16, lora_dropout 0.1, the
pooler and classifier trained (modules_to_save), batch 32, lr 1e-3 linear decay, no warmup, no weight
decay, grad-norm clip 1.0, max_length 64, seed 42 + round, the same number of optimizer steps. Data: BANKING77
train (9,003 rows) / validation (1,003 rows) from ../shared/data/banking77; model: embedded MiniLM-L6.

Timing: examples / seconds of the training phase only (HF: on_train_begin..on_train_end, which
includes its data loading; loratune: the sum of its step times, which include collation; evaluation
excluded in both). Each arm is then scored once on validation (macro-F1 over the 77 train labels,
loratune.metrics for every arm). Config (b) for loratune: the timed run is the first trial of a sweep,
cold (the frozen-prefix cache fills lazily inside its steps, charged to them); the same subprocess
then runs it again as a later trial finds it (warm, `warm_examples_per_s`). Every arm's subprocess is
also timed from start to exit (`process_s`, imports included). Rounds alternate the arm order, and
the load average is recorded per arm.
Every arm runs with torch's default threads (the cores available). How OpenMP threads wait: by default
(`--omp as-user`) each arm as its user gets it, the HF arms with libgomp's own default (a 300,000-iteration
spin) and loratune with the choice it makes on import (src/loratune/openmp.py); `--omp passive` gives every
arm OMP_WAIT_POLICY=PASSIVE, the setting of the rounds before 2026-12-04 (for a machine shared with other jobs,
where spinning threads made the ratios meaningless). Each run records what it ran (`omp`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("BENCH_BANKING77") or Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77")
if not DATA.is_dir():  # BENCH_BANKING77: the folder elsewhere (bench/gpu_check.sh carries a copy to the GPU machine)
    DATA = Path("/work/shared/data/banking77")
RESULTS = Path(__file__).resolve().parent / "results"
# how OpenMP threads wait: the keys of src/loratune/openmp.py USER_KEYS (not imported here: importing loratune
# makes its choice in this process, and the arms would inherit it)
OMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
ARMS = ("trainer", "trainer-grouped", "trainer-grouped-bf16", "loratune", "loratune-cli", "loratune-cli-fp32")
CONFIGS = {
    "a": {"what": "r=8 attn.q+attn.v in all 6 layers + ffn (in, out) in the top 2",
          "loratune": {"target_modules": "[attn.q, attn.v, ffn@top:2]", "layers_to_transform": "all"},
          # what a peft user writes: a regex over module names (peft full-matches it)
          "peft": {"target_modules": r".*\.encoder\.layer\.\d+\.attention\.self\.(query|value)"
                                     r"|.*\.encoder\.layer\.(4|5)\.(intermediate|output)\.dense"}},
    "b": {"what": "r=8 all-linear in the top 2 layers only (frozen-prefix cache)",
          "loratune": {"target_modules": "[all-linear]", "layers_to_transform": "top:2"},
          # peft refuses layers_to_transform with the string "all-linear": name the linear layers
          "peft": {"target_modules": ["query", "key", "value", "dense"], "layers_to_transform": [4, 5],
                   "layers_pattern": "layer"}},
}
TARGETS = {"a": 2.0, "b": 3.0}  # issue 7: loratune examples/s vs the default Trainer on 2 CPU cores
TARGETS_GROUPED = {"a": 2.0, "b": 2.0}  # issue 17: vs the length-grouped Trainer ((b): the first, cold trial)
# Dense bf16 peak of the GPU (tensor cores, no sparsity), FLOP/s, from the vendors' data sheets; matched on
# torch.cuda.get_device_name(). --peak-tflops overrides.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12,
                 "RTX 4090": 165e12, "RTX 3090": 71e12}
COMMON = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "batch": 32, "lr": 1e-3, "max_length": 64, "seed": 42}


def read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def macro_f1(logits, labels: list[str], label_names: list[str]) -> float:
    import numpy as np

    from loratune.metrics import single_label_scores

    index = {lab: i for i, lab in enumerate(label_names)}
    y = np.array([index.get(lab, -1) for lab in labels])
    scores, _ = single_label_scores("val", np.asarray(logits, dtype=np.float32), y, label_names, float("nan"))
    return float(scores["val/macro_f1"])


# ----------------------------------------------------------------------------------------------
# arms (each runs in its own subprocess)


def run_trainer(config: str, steps: int, grouped: bool, seed: int, bf16: bool = False) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainerCallback, TrainingArguments)
    from transformers.utils import logging as hf_logging

    from loratune.config import ModelConfig
    from loratune.models import resolve_model

    hf_logging.set_verbosity_error()
    path = resolve_model(ModelConfig()).path
    texts, labels = read_jsonl(DATA / "train.jsonl")
    val_texts, val_labels = read_jsonl(DATA / "validation.jsonl")
    names = sorted(set(labels))
    index = {lab: i for i, lab in enumerate(names)}

    t_wall = time.perf_counter()
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(names), id2label=dict(enumerate(names)), label2id=index)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=COMMON["r"], lora_alpha=COMMON["lora_alpha"],
                      lora_dropout=COMMON["lora_dropout"], modules_to_save=["classifier", "pooler"],
                      **CONFIGS[config]["peft"])
    model = get_peft_model(model, lora)
    adapted = sorted(n.rsplit(".lora_A", 1)[0].removeprefix("base_model.model.")
                     for n, _ in model.named_modules() if n.endswith(".lora_A"))

    enc = tok(texts, truncation=True, max_length=COMMON["max_length"])
    train_ds = [{"input_ids": i, "attention_mask": m, "labels": index[y]}
                for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels)]
    venc = tok(val_texts, truncation=True, max_length=COMMON["max_length"])
    val_ds = [{"input_ids": i, "attention_mask": m, "labels": index.get(y, -100)}
              for i, m, y in zip(venc["input_ids"], venc["attention_mask"], val_labels)]

    kwargs = dict(output_dir=tempfile.mkdtemp(prefix="hf-bench-"), per_device_train_batch_size=COMMON["batch"],
                  learning_rate=COMMON["lr"], max_steps=steps, seed=seed, report_to="none",
                  save_strategy="no", disable_tqdm=True)
    if torch.cuda.is_available():  # --device cuda: what a GPU user sets
        kwargs.update(bf16=True, optim="adamw_torch_fused")
    elif bf16:  # what a user with a bf16 CPU (avx512_bf16 / AMX) can set: the Trainer's CPU autocast
        kwargs.update(bf16=True, use_cpu=True)
    if grouped:
        try:
            args = TrainingArguments(group_by_length=True, **kwargs)
        except TypeError:  # transformers >= 5 renamed it
            args = TrainingArguments(train_sampling_strategy="group_by_length", **kwargs)
    else:
        args = TrainingArguments(**kwargs)

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.t0

    clock = Clock()
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorWithPadding(tok),
                      callbacks=[clock])
    trainer.train()
    t_eval = time.perf_counter()
    # as a user's compute_metrics would: pair predictions with the label_ids predict() returns, because
    # with group_by_length the Trainer also length-groups (reorders) the evaluation set
    pred = trainer.predict(val_ds)
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    val_labels = [names[i] if i >= 0 else "<unseen>" for i in pred.label_ids]
    shutil.rmtree(args.output_dir, ignore_errors=True)
    return {"train_s": clock.seconds, "examples": steps * COMMON["batch"], "eval_s": time.perf_counter() - t_eval,
            "val_macro_f1": macro_f1(logits, val_labels, names), "wall_s": time.perf_counter() - t_wall,
            "adapted_modules": adapted, "threads": torch.get_num_threads()}


def run_loratune(config: str, steps: int, seed: int) -> dict:
    from loratune import api
    from loratune.config import key_table

    def cfg_for(out: str, n_steps: int):
        flat = {"name_or_path": "embedded:minilm", "dataset_name": str(DATA), "output_dir": out,
                "max_steps": n_steps, "eval_steps": n_steps, "per_device_train_batch_size": COMMON["batch"],
                "learning_rate": COMMON["lr"], "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0,
                "lr_scheduler_type": "linear", "max_length": COMMON["max_length"], "seed": seed,
                "r": COMMON["r"], "lora_alpha": COMMON["lora_alpha"], "lora_dropout": COMMON["lora_dropout"],
                **CONFIGS[config]["loratune"]}
        flat["train_eval_size"] = 128  # scored at the end (step 0: val only), outside the timed steps
        if "train.slices" in key_table():  # validation slices and robustness probes: not part of this race
            flat["train.slices"] = False
            flat["train.robustness_probe"] = False  # (the loratune-cli arm keeps both: the whole process)
        return api.load_config(None, [f"{k}={v}" for k, v in flat.items()])

    t_wall = time.perf_counter()
    out = tempfile.mkdtemp(prefix="lt-bench-")
    extra = {}
    cfg = cfg_for(f"{out}/run", steps)
    dataset = api.prepare(cfg)
    run = api.train(cfg, dataset, progress=False)  # (b): the sweep's first trial, cache cold (filled lazily)
    wall = time.perf_counter() - t_wall
    if config == "b":  # a later trial of the same sweep finds the cache warm
        warm = api.train(cfg_for(f"{out}/warm", steps), dataset, progress=False)
        extra = {"warm_examples_per_s": warm["examples_per_s"], "warm_prefix_cache": warm["prefix_cache"],
                 "warm_val_macro_f1": warm["final"]["val/macro_f1"]}
    adapter_cfg = json.loads((Path(out) / "run" / "adapter" / "adapter_config.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"train_s": run["examples_seen"] / run["examples_per_s"], "examples": run["examples_seen"],
            "val_macro_f1": run["final"]["val/macro_f1"], "wall_s": wall,
            "setup_s": run["setup_s"], "prefix_cache": run["prefix_cache"], "threads": run.get("threads"),
            "timing_s": run.get("timing_s"), "precision": run.get("precision"),
            "peak_memory_mb": run.get("peak_memory_mb"),
            "adapted_modules": sorted(adapter_cfg["target_modules"]), **extra}


def run_loratune_cli(config: str, steps: int, seed: int, precision: str = "auto") -> dict:
    """`loratune train -q` as a user runs it: only the config's keys are given; every other default
    (evaluation schedule, train_eval_size, slices, robustness probe) stays."""
    from loratune.cli import main as cli_main

    out = tempfile.mkdtemp(prefix="lt-cli-")
    flat = {"dataset_name": str(DATA), "output_dir": f"{out}/run", "max_steps": steps,
            "per_device_train_batch_size": COMMON["batch"], "learning_rate": COMMON["lr"], "warmup_ratio": 0.0,
            "weight_decay": 0.0, "max_grad_norm": 1.0, "lr_scheduler_type": "linear",
            "max_length": COMMON["max_length"], "seed": seed, "r": COMMON["r"], "lora_alpha": COMMON["lora_alpha"],
            "lora_dropout": COMMON["lora_dropout"], "precision": precision, **CONFIGS[config]["loratune"]}
    rc = cli_main(["train", "-q", *[f"{k}={v}" for k, v in flat.items()]])
    run = json.loads((Path(out) / "run" / "run.json").read_text())
    adapter_cfg = json.loads((Path(out) / "run" / "adapter" / "adapter_config.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"rc": rc, "train_s": run["examples_seen"] / run["examples_per_s"], "examples": run["examples_seen"],
            "val_macro_f1": run["final"]["val/macro_f1"], "best_val_macro_f1": run["best"]["val/macro_f1"],
            "wall_s": run["setup_s"] + run["wall_s"], "timing_s": run.get("timing_s"),
            "evals": run["steps_done"] // run["eval_every"] + 1 + (run["steps_done"] % run["eval_every"] != 0),
            "prefix_cache": run["prefix_cache"], "precision": run.get("precision"),
            "peak_memory_mb": run.get("peak_memory_mb"),
            "adapted_modules": sorted(adapter_cfg["target_modules"])}


def model_flops_per_token(config: str) -> dict:
    """Training FLOPs per (unpadded) token of config `config` with LoRA on a frozen base, from the
    model's own shapes: forward 2 x every matmul weight, backward 2 x those for the activation
    gradients (frozen weights get none) + 2 x the trainable ones for their weight gradients, and the
    attention scores and mixing (2 x 2 x layers x seq x hidden forward, twice that backward) at the
    mean length. Used for MFU on a GPU."""
    import torch.nn as nn

    from loratune import api
    from loratune.adapt import apply_adapter
    from loratune.models import load_classifier

    cfg = api.load_config(None, [f"{k}={v}" for k, v in CONFIGS[config]["loratune"].items()])
    texts, labels = read_jsonl(DATA / "train.jsonl")
    model, _ = apply_adapter(load_classifier(cfg.model, len(set(labels)), False), cfg.adapter)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad and p.ndim >= 2)
    hf = model.get_base_model().config
    from loratune.models import load_tokenizer
    tok = load_tokenizer(cfg.model)
    mean_len = sum(len(x) for x in tok(texts[:2000], truncation=True, max_length=COMMON["max_length"])["input_ids"]) / 2000
    attn = 4 * hf.num_hidden_layers * mean_len * hf.hidden_size
    return {"flops_per_token": 4 * matmul + 2 * trainable + 3 * attn, "mean_tokens": mean_len}


def _process_start() -> float:
    """This process's start time (epoch seconds), from /proc (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    return boot + start


def child(arm: str, config: str, steps: int, seed: int, peak: float | None = None) -> None:
    load0 = os.getloadavg()[0]
    omp = {k: os.environ[k] for k in OMP_KEYS if k in os.environ} or "the runtime's default"  # before any import
    if arm == "loratune":
        res = run_loratune(config, steps, seed)
    elif arm in ("loratune-cli", "loratune-cli-fp32"):
        res = run_loratune_cli(config, steps, seed, precision="fp32" if arm.endswith("fp32") else "auto")
    else:
        res = run_trainer(config, steps, grouped=arm.startswith("trainer-grouped"), seed=seed,
                          bf16=arm == "trainer-grouped-bf16")
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        peak = peak or next((v for k, v in GPU_PEAK_BF16.items() if k in name), None)
        f = model_flops_per_token(config)
        flops = f["flops_per_token"] * f["mean_tokens"] * res["examples"]
        import peft
        import transformers

        res.update({"gpu": name, "peak_flops": peak, "model_flops": flops,
                    "env": {"torch": torch.__version__, "transformers": transformers.__version__,
                            "peft": peft.__version__},
                    "mfu": flops / res["train_s"] / peak if peak else None,
                    "gpu_peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20})
    res["child_process_s"] = time.time() - _process_start()  # start to (almost) exit, imports included
    if arm.startswith("loratune") and "loratune.openmp" in sys.modules:
        omp = dict(sys.modules["loratune.openmp"].CHOICE)  # the choice loratune made on import
    res.update({"arm": arm, "config": config, "steps": steps, "seed": seed, "omp": omp,
                "examples_per_s": res["examples"] / res["train_s"],
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "load_before": load0, "load_after": os.getloadavg()[0]})
    print("RESULT " + json.dumps(res))


# ----------------------------------------------------------------------------------------------
# the side-by-side driver


def summarize(results: list[dict], steps: int, rounds: int, elapsed: float) -> dict:
    summary = {"steps": steps, "batch": COMMON["batch"], "examples": steps * COMMON["batch"], "rounds": rounds,
               "cpu_cores": len(os.sched_getaffinity(0)), "elapsed_s": round(elapsed, 1), "configs": {}}
    for config in sorted({r["config"] for r in results}):
        rows = [r for r in results if r["config"] == config]
        by_arm = {arm: [r for r in rows if r["arm"] == arm] for arm in ARMS if any(r["arm"] == arm for r in rows)}
        arms = {}
        for arm, rs in by_arm.items():
            arms[arm] = {"examples_per_s": [round(r["examples_per_s"], 2) for r in rs],
                         "peak_rss_mb": [round(r["peak_rss_mb"]) for r in rs],
                         "val_macro_f1": [round(r["val_macro_f1"], 4) for r in rs],
                         "load": [round(r["load_before"], 2) for r in rs],
                         "wall_s": [round(r["wall_s"], 1) for r in rs],
                         "process_s": [round(r["process_s"], 1) for r in rs if "process_s" in r]}
            for key in ("warm_examples_per_s", "warm_val_macro_f1", "mfu", "gpu_peak_memory_mb", "evals",
                        "best_val_macro_f1"):
                if key in rs[0]:
                    digits = 7 if key == "mfu" else 4  # a GPU's MFU on MiniLM is a few 1e-4
                    arms[arm][key] = [None if r.get(key) is None else round(r[key], digits) for r in rs]
            if rs[0].get("timing_s"):
                arms[arm]["timing_s"] = [r["timing_s"] for r in rs]
            if rs[0].get("prefix_cache"):
                arms[arm]["runs"] = [{"prefix_cache": r["prefix_cache"]} for r in rs]
            if arm.startswith("trainer"):  # after imports: load + tokenize, train, predict
                arms[arm]["timing_s"] = [{"load_tokenize": round(r["wall_s"] - r["train_s"] - r["eval_s"], 1),
                                          "train": round(r["train_s"], 1), "evaluate": round(r["eval_s"], 1)}
                                         for r in rs]
        ratios = {}
        for base_arm, tag in (("trainer", "trainer"), ("trainer-grouped", "grouped"),
                              ("trainer-grouped-bf16", "grouped_bf16")):
            base = by_arm.get(base_arm)
            if base is None:
                continue
            for arm, rs in by_arm.items():
                if arm == base_arm or (base_arm.startswith("trainer-grouped") and arm.startswith("trainer")):
                    continue
                # per round: the arms of one round ran back to back, so their ratio shares the load
                pairs = [(a, b) for a in rs for b in base if a["round"] == b["round"]]
                speed = [a["examples_per_s"] / b["examples_per_s"] for a, b in pairs]
                row = ratios.setdefault(arm, {})
                row[f"speed_vs_{tag}"] = [round(x, 2) for x in speed]
                row[f"speed_vs_{tag}_median"] = round(statistics.median(speed), 2)
                row[f"peak_rss_vs_{tag}"] = round(statistics.median(a["peak_rss_mb"] / b["peak_rss_mb"]
                                                                    for a, b in pairs), 2)
                if all("process_s" in a and "process_s" in b for a, b in pairs):
                    proc = [b["process_s"] / a["process_s"] for a, b in pairs]  # > 1: this arm's process is faster
                    row[f"process_speed_vs_{tag}"] = [round(x, 2) for x in proc]
                    row[f"process_speed_vs_{tag}_median"] = round(statistics.median(proc), 2)
                if "warm_examples_per_s" in rs[0]:
                    warm = [a["warm_examples_per_s"] / b["examples_per_s"] for a, b in pairs]
                    row[f"warm_speed_vs_{tag}_median"] = round(statistics.median(warm), 2)
        lt = ratios.get("loratune", {})
        if "speed_vs_trainer_median" in lt and config in TARGETS:
            lt["target_vs_trainer"] = TARGETS[config]
            lt["target_vs_trainer_met"] = lt["speed_vs_trainer_median"] >= TARGETS[config]
        if "speed_vs_grouped_median" in lt:
            lt["target_vs_grouped"] = TARGETS_GROUPED[config]
            lt["target_vs_grouped_met"] = lt["speed_vs_grouped_median"] >= TARGETS_GROUPED[config]
        cli = ratios.get("loratune-cli", {})
        if "process_speed_vs_grouped_median" in cli:
            cli["whole_process_faster_than_grouped"] = cli["process_speed_vs_grouped_median"] > 1.0
        same = {arm: rs[0].get("adapted_modules") for arm, rs in by_arm.items()}
        summary["configs"][config] = {"what": CONFIGS[config]["what"], "arms": arms, "ratios": ratios,
                                      "same_adapted_modules": len({json.dumps(v) for v in same.values()}) == 1,
                                      "n_adapted_modules": len(next(iter(same.values())) or [])}
    return summary


NOTES = [
    "## How this was measured", "",
    "- Each arm is its own subprocess (peak RSS = its `ru_maxrss`); rounds alternate the arm order, and the "
    "ratios are taken within a round (arms of a round ran back to back under similar load).",
    "- examples/s counts the training phase only: HF from `on_train_begin` to `on_train_end` (data loading "
    "included), loratune the sum of its step times (collation included); evaluation is outside both. "
    "`wall s` is the whole subprocess after imports: model load, tokenization, training and evaluation "
    "(as today's bench runs them, which the recorded runs may predate: loratune scores val at step 0, val + a "
    "128-row train subsample at the end; HF predicts val once with its default eval batch of 8).",
    "- Same for every arm: embedded MiniLM-L6, BANKING77 train / validation, LoRA r=8 alpha 16 dropout 0.1, "
    "pooler + classifier trained, batch 32, lr 1e-3 linear decay, no warmup, no weight decay, clip 1.0, "
    "max_length 64; {seeds} (so the F1 spread shows seed noise). The adapted "
    "module sets are checked to be identical.",
    "- HF arms are configured as a user would: AutoModelForSequenceClassification, get_peft_model, "
    "DataCollatorWithPadding, default TrainingArguments (plus save_strategy=no, report_to=none, "
    "disable_tqdm). transformers 5 removed `group_by_length=True`; the grouped arm uses "
    "`train_sampling_strategy=\"group_by_length\"`, which also reorders `predict()` output, so "
    "val macro-F1 pairs predictions with the `label_ids` predict() returns.",
    "- Config (b), loratune: the timed run is a sweep's first trial, cache cold: the states entering "
    "block 4 are computed lazily, inside the forward of the first batch (or evaluation) that needs a row, "
    "and that cost is inside its step times. The same subprocess then trains the same config again as a "
    "later trial of `loratune tune` would (`splits_reused: 3`, cache warm): `warm` figures. A run shorter "
    "than an epoch meets every training row once, so its first trial computes each row's prefix exactly "
    "once, as the Trainer's forward does: the cold gain comes from validation (scored at step 0, cached "
    "for later points) and from rows met again in later epochs.",
    "- `loratune-cli` is the whole process a user times: `loratune train -q` with the config's keys, "
    "everything else default (as of today's bench and defaults, which the recorded runs may predate: evaluation "
    "schedule capped by `max_eval_share`, validation only at step 0, "
    "train_eval_size 512, slices, robustness probe on 256 rows when its predictions fit the same cap: "
    "run.json `robustness.skipped` says when not), timed from the driver (process start to exit, imports "
    "included) like the Trainer's script, which loads, tokenizes, trains and predicts validation once "
    "(the Trainer's default evaluates nothing during training). Its breakdown comes from run.json "
    "`timing_s`; `rest` is the process less the phases (interpreter start, imports outside a phase, "
    "reading the data, records, the CLI's diagnosis and output).",
    "- Seed noise of val macro-F1 after 80 steps (2,560 examples), measured apart with loratune on "
    "config (b), seeds 1-3: length-grouped batches 0.331 / 0.336 / 0.447, random batches 0.410 / "
    "0.404 / 0.422. Grouped batches hold texts of one length, which in BANKING77 means fewer classes "
    "per batch, so early in training they are noisier and on average a little behind random batches; "
    "the HF grouped arm shows the same. Compare loratune's F1 with trainer-grouped's, and both with "
    "that spread.",
    "- `--device cuda` (bf16 autocast, fused AdamW, MFU = model FLOPs per step / the GPU's dense bf16 peak) "
    "writes throughput_cuda.md (bench/gpu_check.sh runs it on a lent GPU machine). On a machine without CUDA "
    "it prints `skipped` and exits 0.", ""]



def _ranges(xs) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    xs, out = sorted(set(xs)), []
    for x in xs:
        if out and x == out[-1][1] + 1:
            out[-1][1] = x
        else:
            out.append([x, x])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


def command_text(summary: dict) -> str:
    """The command line(s) that produced the runs: as each run recorded it (`argv`, runs since 2026-12-06); for
    runs that predate that record, what the runs themselves record (steps, configs, arms, round numbers, device,
    concurrency), said to be reconstructed and naming no option they do not record."""
    runs = summary.get("runs") or []
    argvs = []
    for r in runs:
        if r.get("argv") is not None and r["argv"] not in argvs:
            argvs.append(r["argv"])
    if argvs and all(r.get("argv") is not None for r in runs):
        return "Command: " + "; then ".join(f"`python bench/throughput.py {shlex.join(a)}`" for a in argvs)
    configs = sorted({r["config"] for r in runs})
    arms = [a for a in ARMS if any(r["arm"] == a for r in runs)]
    rounds = [r["round"] for r in runs if r.get("round") is not None]
    conc = {r.get("concurrent") for r in runs}
    opts = f"--steps {summary['steps']} --configs {','.join(configs)} --arms {','.join(arms)}"
    if conc == {True}:
        opts += " --concurrent"
    if summary.get("device", "cpu") != "cpu":
        opts += " --device cuda"
    how = ("arms of a round together" if conc == {True} else "arms one after another" if conc == {False}
           else "whether the arms ran together is not recorded")
    return (f"Command not recorded (the runs predate it); as recorded by the runs: `python bench/throughput.py "
            f"{opts}` over rounds {_ranges(rounds) or '?'} ({how})")


def seeds_text(runs: list[dict]) -> str:
    """Each round's seed, as the runs recorded it."""
    by_round: dict = {}
    for r in runs:
        by_round.setdefault(r.get("round"), set()).add(r.get("seed"))
    if not by_round or any(None in v for v in by_round.values()):
        return "the seed per round as each run records it"
    return "seed " + ", ".join(f"{'/'.join(str(x) for x in sorted(v))} in round {k}"
                               for k, v in sorted(by_round.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))


def _omp_value(v) -> str:
    if isinstance(v, dict):
        if "wait" in v:
            return f"loratune's choice: {v['wait']}" + (f" (GOMP_SPINCOUNT {v['GOMP_SPINCOUNT']:,})"
                                                        if v.get("GOMP_SPINCOUNT") is not None else "")
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def omp_note(summary: dict) -> str:
    """How OpenMP threads waited, as the runs recorded it (`omp`, runs since 2026-12-04), else that they do not."""
    runs = summary.get("runs") or []
    cores = summary.get("cpu_cores")
    head = (f"- The {cores} cores may be shared with other jobs (load average per arm in the tables), so absolute "
            "examples/s are noisy; compare the within-round ratios. `--omp passive` (OMP_WAIT_POLICY=PASSIVE for "
            "every arm) exists because on shared cores, with spinning threads, a MiniLM step at batch 32 x 16 tokens "
            "took 2.8 s instead of 0.23 s at load 4.5. ")
    if not runs or all(r.get("omp") is None for r in runs):
        return head + ("These runs do not record how OpenMP threads waited (they predate each run's `omp` record; "
                       "the rounds before 2026-12-04 ran every arm with OMP_WAIT_POLICY=PASSIVE, today's "
                       "`--omp passive`).")
    by_arm: dict = {}
    for r in runs:
        val = "not recorded" if r.get("omp") is None else _omp_value(r["omp"])
        vals = by_arm.setdefault(r["arm"], [])
        if val not in vals:
            vals.append(val)
    return head + ("How OpenMP threads waited, as each run recorded it (`omp`): "
                   + "; ".join(f"{arm}: {' / '.join(v)}" for arm, v in by_arm.items()) + ".")


def notes_for(summary: dict) -> list[str]:
    """NOTES with what these runs recorded filled in (seeds, cores, OpenMP)."""
    lines = [x.replace("{seeds}", seeds_text(summary.get("runs") or [])) for x in NOTES]
    at = next(i for i, x in enumerate(lines) if x.startswith("- Seed noise of val macro-F1"))
    return lines[:at] + [omp_note(summary)] + lines[at:]


# What the GPU rounds ran on and how, for throughput_cuda.md (bench/gpu_check.sh runs them on a lent GPU machine)
GPU_NOTES = [
    "## How this was measured (GPU)", "",
    "- `bash bench/gpu_check.sh run` on a lent GPU machine: its image's own torch / transformers / peft (versions "
    "per run in the JSON's `env`), loratune from `src/`, no network. The MiniLM weights travelled in float16 (the "
    "float32 file is over the transfer limit) and were restored to float32 there: every arm read the same weights, "
    "within 1e-3 of the original.",
    "- Every arm on the GPU under bf16 autocast with fused AdamW: the Trainer with `bf16=True, "
    "optim=\"adamw_torch_fused\"` (what a GPU user sets), loratune with `precision: auto` (bf16 on a CUDA device "
    "with bf16). Length-grouped batches in both; {seeds}, {examples} training examples per arm ({steps} steps): a "
    "CPU race's steps and seeds are in its own record, compare only where they match.",
    "- MFU = the model FLOPs of the training examples (`model_flops_per_token` x mean unpadded tokens x examples) / "
    "the training seconds / the GPU's dense bf16 peak (`GPU_PEAK_BF16`, the data sheet's figure).",
    "- Rounds run in separate leases of a machine are not comparable with each other (a fresh machine's first CUDA "
    "process pays for starting the device); compare arms within a round.", ""]


def gpu_notes_for(summary: dict) -> list[str]:
    """GPU_NOTES with what these runs recorded filled in (seeds, examples, steps)."""
    return [x.replace("{seeds}", seeds_text(summary.get("runs") or [])).replace("{examples}", str(summary["examples"]))
            .replace("{steps}", str(summary["steps"])) for x in GPU_NOTES]


def _med(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def _breakdown(arm: str, a: dict) -> str:
    """Median seconds per phase over the rounds; `rest` is the process (start to exit) less the phases:
    interpreter start, imports not inside a phase, reading the data, records and CLI output."""
    runs = a.get("timing_s") or []
    if not runs:
        return ""
    keys = sorted({k for t in runs for k in t})
    parts = {k: _med([t.get(k) for t in runs]) for k in keys}
    if a.get("process_s"):
        parts["rest"] = _med([p - sum(v for v in t.values() if v is not None)
                              for p, t in zip(a["process_s"], runs)])
        parts["process"] = _med(a["process_s"])
    return ", ".join(f"{k} {v:.1f}" for k, v in parts.items())


RENDERED_SECTIONS = ("## Config (", "## How this was measured", "## The concurrent rounds")  # what a render writes


def hand_written_sections(path: Path) -> list[str]:
    """The `## ` sections of an existing md that write_markdown does not write (text added by hand): a render over it
    would lose them."""
    if not path.is_file():
        return []
    return [x for x in path.read_text(encoding="utf-8").splitlines()
            if x.startswith("## ") and not x.startswith(RENDERED_SECTIONS)]


def write_markdown(summary: dict, path: Path) -> None:
    cpu = summary.get("device", "cpu") == "cpu"
    lines = [f"# Training throughput: loratune vs HF Trainer + peft ({'CPU' if cpu else 'GPU'})", "",
             f"{command_text(summary)}; "
             + (f"{summary['cpu_cores']} CPU cores, which may be shared with other jobs (load average per arm below); "
                if cpu
                else f"{summary.get('gpu', 'a GPU')}, {summary['cpu_cores']} CPU cores; ")
             + f"{summary['examples']} training examples per arm ({summary['steps']} steps x {summary['batch']}); "
             f"total {summary['elapsed_s'] / 60:.1f} min. Before issue 17: "
             "[throughput_before_issue17.md](throughput_before_issue17.md); the levers one at a time: "
             "[levers.md](levers.md).", ""]
    if summary.get("note"):
        lines += [f"Rounds: {summary['note']}.", ""]
    for config, c in summary["configs"].items():
        lines += [f"## Config ({config}): {c['what']}", "",
                  f"Adapted modules identical across arms: {c['same_adapted_modules']} ({c['n_adapted_modules']}).", "",
                  "| arm | examples/s per round | vs trainer, median (per round) | vs grouped trainer, median "
                  "(per round) | vs grouped trainer bf16, median (per round) | peak RSS MB | val macro-F1 per round "
                  "| load avg | process s (start to exit) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for arm, a in c["arms"].items():
            r = c["ratios"].get(arm, {})
            vs_t = (f"{r['speed_vs_trainer_median']:.2f}x ({', '.join(f'{x:.2f}' for x in r['speed_vs_trainer'])})"
                    if "speed_vs_trainer" in r else ("1.00x" if arm == "trainer" else "-"))
            vs_g = (f"{r['speed_vs_grouped_median']:.2f}x ({', '.join(f'{x:.2f}' for x in r['speed_vs_grouped'])})"
                    if "speed_vs_grouped" in r else ("1.00x" if arm == "trainer-grouped" else "-"))
            vs_b = (f"{r['speed_vs_grouped_bf16_median']:.2f}x "
                    f"({', '.join(f'{x:.2f}' for x in r['speed_vs_grouped_bf16'])})"
                    if "speed_vs_grouped_bf16" in r else ("1.00x" if arm == "trainer-grouped-bf16" else "-"))
            lines.append(f"| {arm} | {', '.join(f'{x:.1f}' for x in a['examples_per_s'])} | {vs_t} | {vs_g} | {vs_b} "
                         f"| {', '.join(str(x) for x in a['peak_rss_mb'])} "
                         f"| {', '.join(f'{x:.3f}' for x in a['val_macro_f1'])} "
                         f"| {', '.join(f'{x:.1f}' for x in a['load'])} "
                         f"| {', '.join(f'{x:.0f}' for x in a.get('process_s', []))} |")
        lt, cli = c["ratios"].get("loratune", {}), c["ratios"].get("loratune-cli", {})
        lines.append("")
        if "warm_examples_per_s" in c["arms"].get("loratune", {}):
            a = c["arms"]["loratune"]
            lazy = [((r.get("prefix_cache") or {}).get("lazy") or {}) for r in a.get("runs", [])]
            lines += [f"loratune above is the sweep's first trial, cache cold (filled lazily inside its steps; "
                      f"rows computed and their seconds: {', '.join(str(x) for x in lazy) or 'see the JSON'}). "
                      f"A later trial of the same sweep (cache warm): "
                      f"{', '.join(f'{x:.1f}' for x in a['warm_examples_per_s'])} examples/s, "
                      f"{lt.get('warm_speed_vs_grouped_median', float('nan')):.2f}x the grouped Trainer, "
                      f"val macro-F1 {', '.join(f'{x:.3f}' for x in a['warm_val_macro_f1'])}.", ""]
        if "target_vs_grouped" in lt:
            lines.append(f"Target (issue 17) {lt['target_vs_grouped']:.0f}x the length-grouped Trainer"
                         f"{' (first trial, cache cold)' if config == 'b' else ' (cold)'}: "
                         f"{'met' if lt['target_vs_grouped_met'] else 'MISSED'} ({lt['speed_vs_grouped_median']:.2f}x). ")
        if "target_vs_trainer" in lt:
            lines.append(f"Target (issue 7) {lt['target_vs_trainer']:.0f}x the default Trainer: "
                         f"{'met' if lt['target_vs_trainer_met'] else 'MISSED'} ({lt['speed_vs_trainer_median']:.2f}x).")
        if "process_speed_vs_grouped_median" in cli:
            lines += ["", f"Whole process, `loratune train` with its default evaluation schedule and extras vs the "
                          f"grouped Trainer's script (start to exit): the grouped Trainer's time / loratune's = "
                          f"{cli['process_speed_vs_grouped_median']:.2f} "
                          f"({', '.join(f'{x:.2f}' for x in cli['process_speed_vs_grouped'])}): "
                          f"{'faster' if cli['whole_process_faster_than_grouped'] else 'SLOWER'}; evaluation points: "
                          f"{', '.join(str(int(x)) for x in c['arms']['loratune-cli'].get('evals', []))}."]
        rows = [(arm, _breakdown(arm, a)) for arm, a in c["arms"].items()]
        if any(b for _, b in rows):
            lines += ["", "Where the wall time goes (median seconds over the rounds):", ""]
            lines += [f"- {arm}: {b}" for arm, b in rows if b]
        if not cpu:
            lines += ["", "| arm | MFU per round | GPU peak memory MB |", "|---|---|---|"]
            for arm, a in c["arms"].items():
                lines.append(f"| {arm} | {', '.join(f'{x:.3%}' for x in a.get('mfu', []) if x is not None)} "
                             f"| {', '.join(f'{x:.0f}' for x in a.get('gpu_peak_memory_mb', []))} |")
        lines.append("")
    lines += notes_for(summary) if cpu else gpu_notes_for(summary)
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--first-round", type=int, default=0,
                    help="number the rounds from here (order and seed follow the number): finish a cut-short run "
                         "in another session, then --render the runs of both")
    ap.add_argument("--out", help=f"results folder (default {RESULTS}; --render: the input JSON's folder)")
    ap.add_argument("--configs", default="a,b")
    ap.add_argument("--render", metavar="JSON", help="only re-summarize the runs of a results JSON")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--omp", choices=("as-user", "passive"), default="as-user",
                    help="how OpenMP threads wait in every arm (module docstring)")
    ap.add_argument("--concurrent", action="store_true",
                    help="start the arms of a round together (they share the cores; same outside load)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: every arm on the GPU, bf16 (HF: bf16=True; loratune: precision auto), fused "
                         "AdamW, MFU reported; skipped (exit 0) where CUDA is missing")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, when not in GPU_PEAK_BF16")
    ap.add_argument("--child", nargs=4, metavar=("ARM", "CONFIG", "STEPS", "SEED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    peak = args.peak_tflops * 1e12 if args.peak_tflops else None
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]), peak)
        return
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("skipped: --device cuda needs a CUDA device, and torch sees none "
                  f"(torch {torch.__version__}, built {'with' if torch.version.cuda else 'without'} CUDA)")
            return
    if args.render:  # recompute the summary from the recorded runs: <stem>.json and <stem>.md of the input's name
        src = Path(args.render)
        out = Path(args.out) if args.out else src.parent
        stem = src.stem
        kept = hand_written_sections(out / f"{stem}.md")
        if kept:  # e.g. --render of throughput.json: throughput.md holds the sessions' write-ups
            print(f"error: {out / f'{stem}.md'} holds sections written by hand that a render would lose "
                  f"({'; '.join(kept[:3])}{'; ...' if len(kept) > 3 else ''}); render elsewhere with --out DIR, "
                  "or from a copy of the JSON under another name", file=sys.stderr)
            raise SystemExit(2)
        old = json.loads(src.read_text())
        summary = summarize(old["runs"], old["steps"], old["rounds"], old["elapsed_s"])
        summary["cpu_cores"] = old.get("cpu_cores", summary["cpu_cores"])  # the machine that ran them
        if old.get("note"):  # how the runs came to be (e.g. rounds of several GPU leases)
            summary["note"] = old["note"]
        summary["runs"] = old["runs"]
        summary["device"] = old.get("device", "cpu")
        if summary["device"] != "cpu":
            summary["gpu"] = next((r["gpu"] for r in old["runs"] if r.get("gpu")), None)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        write_markdown(summary, out / f"{stem}.md")
        return
    configs = args.configs.split(",")
    arms = tuple(a for a in ARMS if a in args.arms.split(","))
    results, t0 = [], time.perf_counter()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "LORATUNE_CACHE_DIR": tempfile.mkdtemp(prefix="lt-cache-")}  # no warm disk cache from earlier runs
    for key in OMP_KEYS:  # --omp as-user: each arm's runtime decides (module docstring)
        env.pop(key, None)
    if args.omp == "passive":  # on cores shared with other jobs, spinning OpenMP threads made 2-thread steps
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # 2-3x slower and erratic (3.3 s vs 1.4 s per step at load 7)
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU race stays on the CPU where a GPU exists
    for rnd in range(args.first_round, args.first_round + args.rounds):
        for config in configs:
            order = arms if rnd % 2 == 0 else tuple(reversed(arms))
            seed = COMMON["seed"] + rnd  # a new seed per round: the F1 spread shows the seed noise
            # --concurrent: the arms of a round start together and share the cores for the whole race, so
            # load from other jobs that comes and goes hits them alike (the default runs them one by one)
            groups = [order] if args.concurrent else [(arm,) for arm in order]
            for group in groups:
                t = time.perf_counter()
                procs = {arm: subprocess.Popen([sys.executable, __file__, "--child", arm, config, str(args.steps),
                                                str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               text=True, env=env) for arm in group}
                for arm, proc in procs.items():
                    stdout, stderr = proc.communicate()
                    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
                    if proc.returncode != 0 or line is None:
                        print(stdout[-2000:], stderr[-4000:], file=sys.stderr)
                        raise SystemExit(f"arm {arm} config {config} failed")
                    res = json.loads(line[len("RESULT "):])
                    res["round"] = rnd
                    res["concurrent"] = args.concurrent
                    res["argv"] = sys.argv[1:]  # what ran it, for --render (command_text)
                    res["process_s"] = res.pop("child_process_s", None) or time.perf_counter() - t
                    results.append(res)
                    partial = {"steps": args.steps, "rounds": args.rounds, "elapsed_s": time.perf_counter() - t0,
                               "device": args.device, "cpu_cores": len(os.sched_getaffinity(0)),
                               "runs": results}  # --render it if the run is cut short
                    folder = Path(args.out or RESULTS)
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / "throughput.partial.json").write_text(json.dumps(partial), encoding="utf-8")
                    print(f"round {rnd} config {config} {arm:16s} {res['examples_per_s']:7.1f} ex/s  "
                          f"rss {res['peak_rss_mb']:6.0f} MB  val F1 {res['val_macro_f1']:.4f}  "
                          f"load {res['load_before']:.1f}  ({res['process_s']:.0f} s)", flush=True)
    shutil.rmtree(env["LORATUNE_CACHE_DIR"], ignore_errors=True)
    summary = summarize(results, args.steps, args.rounds, time.perf_counter() - t0)
    summary["runs"] = results
    summary["device"] = args.device
    if args.device != "cpu":
        summary["gpu"] = next((r["gpu"] for r in results if r.get("gpu")), None)
    out = Path(args.out or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    stem = "throughput" if args.device == "cpu" else "throughput_cuda"
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    write_markdown(summary, out / f"{stem}.md")
    print(json.dumps({c: v["ratios"] for c, v in summary["configs"].items()}, indent=2))


if __name__ == "__main__":
    main()
