"""SFT bench (issue 16): SmolLM2-135M (embedded:smollm2) fine-tuned generatively with `loratune train
task=causal-lm`, on the demo instruction data and on BANKING77 as generation (label_format=generate):
a healthy, an induced-overfit and an induced lr-too-small run on each, their curves, prompt-set scores
over time and the verdict of `loratune diagnose`; then throughput against TRL `SFTTrainer` + peft.

    python bench/sft.py prepare              # data subsets and prompt sets under /tmp/sft_bench/data
    python bench/sft.py runs [--only instr]  # the six runs (each a `loratune train -q` subprocess) + diagnose
    python bench/sft.py throughput --rounds 2 --steps 12
    python bench/sft.py report               # bench/results/sft.json + sft.md from the run dirs

Everything is written under --root (default /tmp/sft_bench); only `report` writes into the repo.

The configs were fixed from protocol section 9 before any run, and each ran once (no rule or config
was changed after seeing a verdict):
- healthy: LoRA r=8, alpha 16 on attn (q, k, v, o) in every block, lr 1e-3, linear decay, 6% warmup;
- overfit: few rows (16 instruction rows / 2 per intent), r=64 alpha 128 on all-linear, lr 1e-3, the
  same number of steps, so 10-12 epochs;
- lr-too-small: the healthy config at lr 1e-6.

Prompt sets (fixed before any run):
- instructions: the first 8 `familiar` and the first 8 `novel` rows of the shipped prompt_set.jsonl
  (16 prompts: one generation batch). The overfit run's 16 training rows are, for each of those 8
  familiar prompts, its nearest training instruction (chrF, loratune.generation.chrf; 6 distinct rows),
  filled up to 16 with seeded random rows, so the familiar prompts stay "close to a training prompt" in
  the overfit run too;
- BANKING77: 10 intents drawn with random.Random(0), 20 train rows each (seeded), 4 validation rows
  each; the overfit run keeps 2 train rows per intent. Prompt set from the test split of those intents
  (reference = the label name): familiar = the 8 test texts closest (chrF) to a text of the overfit
  run's 20 rows (so close to training in every run), novel = the 8 farthest from any of the 200 rows.

Sizes (2 CPU cores shared with a load average of 10-13 from other work): instructions 24 steps of 4 x
96 tokens, evaluation every 6 steps, 24 new tokens per prompt; BANKING77 20 steps of 8 x 64 tokens,
evaluation every 5 steps, 12 new tokens.

Throughput: loratune (`loratune train -q`, timed by its own step times: examples_per_s in run.json,
which include collation and the optimizer step, not evaluation) against TRL SFTTrainer + peft (a
callback times on_step_begin..on_step_end the same way), each arm a fresh subprocess, the order
alternated per round, the load average recorded per arm. Same model (the GGUF dequantised to float32,
loaded as loratune.models.load_causal_lm does), same rows (the healthy instruction train set as
conversational prompt/completion, rendered with SmolLM2's chat template by both), LoRA r=8 alpha 16
dropout 0.1 on q/k/v/o, batch 4, max_length 96, lr 1e-3 linear, warmup 6%, weight decay 0.01, AdamW,
grad clip 1.0, length-grouped batches in both (TRL: train_sampling_strategy=group_by_length),
completion-only loss in both (TRL: completion_only_loss=True on prompt/completion data), fp32, no
activation checkpointing in either (TRL's default is on: turned off). 6 steps per arm; rounds 0-1 ran
beside this bench's own six runs (load 11-18), rounds 2-5 after them (`--start-round 2`, `--start-round 4`).
Both arms use seed 42 in every round (the same batches each round)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEMO = REPO / "src" / "loratune" / "demo_data"
PY = sys.executable
LORATUNE = str(Path(PY).parent / "loratune")

GROUPS = ("familiar", "novel")
TP_TRL_ARMS = ("trl", "trl-bf16")  # the throughput arms that run TRL's SFTTrainer (float32, bf16 autocast)
N_PROMPTS = 8  # per group: 16 prompts are one generation batch (sft.GEN_BATCH)
PROMPT_METRICS = ("chrf", "exact_match", "len_ratio", "repetition", "empty")

INSTR_COMMON = {"task": "causal-lm", "max_length": 96, "per_device_train_batch_size": 4, "max_steps": 24,
                "eval_steps": 6, "max_new_tokens": 24, "train_eval_size": 16, "precision": "auto", "seed": 42}
BANK_COMMON = {"task": "causal-lm", "label_format": "generate", "max_length": 64, "per_device_train_batch_size": 8,
               "max_steps": 20, "eval_steps": 5, "max_new_tokens": 12, "train_eval_size": 16, "precision": "auto",
               "seed": 42}
HEALTHY = {"r": 8, "lora_alpha": 16, "target_modules": "[attn]", "learning_rate": 1e-3}
OVERFIT = {"r": 64, "lora_alpha": 128, "target_modules": "[all-linear]", "learning_rate": 1e-3}
SMALL_LR = {**HEALTHY, "learning_rate": 1e-6}
KINDS = {"healthy": HEALTHY, "overfit": OVERFIT, "lr_too_small": SMALL_LR}


def run_specs(root: Path) -> list[dict]:
    d = root / "data"
    specs = []
    for kind, knobs in KINDS.items():
        data = d / ("instr_overfit" if kind == "overfit" else "instr")
        specs.append({"dataset": "instructions", "kind": kind,
                      "overrides": {**INSTR_COMMON, **knobs, "dataset_name": str(data),
                                    "prompt_set": str(d / "instr_prompt_set.jsonl")}})
    for kind, knobs in KINDS.items():
        data = d / ("bank_overfit" if kind == "overfit" else "bank")
        specs.append({"dataset": "banking77", "kind": kind,
                      "overrides": {**BANK_COMMON, **knobs, "dataset_name": str(data),
                                    "prompt_set": str(d / "bank_prompt_set.jsonl")}})
    for s in specs:
        s["name"] = f"{s['dataset']}-{s['kind']}"
        s["run_dir"] = str(root / "runs" / s["name"])
    return specs


# ------------------------------------------------------------------------------------------ data

def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def write_jsonl(p: Path, rows: list[dict]) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def prepare(root: Path) -> dict:
    from loratune.generation import chrf

    d = root / "data"
    info: dict = {}
    # instructions
    src = DEMO / "instructions"
    train, val, ps = read_jsonl(src / "train.jsonl"), read_jsonl(src / "validation.jsonl"), read_jsonl(
        src / "prompt_set.jsonl")
    prompts = [r for g in GROUPS for r in [x for x in ps if x["group"] == g][:N_PROMPTS]]
    write_jsonl(d / "instr_prompt_set.jsonl", prompts)
    write_jsonl(d / "instr" / "train.jsonl", train)
    write_jsonl(d / "instr" / "validation.jsonl", val)
    keep: list[int] = []
    for p in prompts:
        if p["group"] != "familiar":
            continue
        best = max(range(len(train)), key=lambda i: chrf(p["prompt"], train[i]["prompt"]))
        if best not in keep:
            keep.append(best)
    nearest = len(keep)
    rng = random.Random(0)
    rest = [i for i in range(len(train)) if i not in keep]
    rng.shuffle(rest)
    keep += rest[: 16 - len(keep)]
    write_jsonl(d / "instr_overfit" / "train.jsonl", [train[i] for i in sorted(keep)])
    write_jsonl(d / "instr_overfit" / "validation.jsonl", val)
    info["instructions"] = {"train": len(train), "val": len(val), "prompt_set": dict(Counter(p["group"] for p in prompts)),
                            "overfit_train": len(keep), "overfit_nearest_neighbours": nearest}
    # BANKING77
    src = DEMO / "banking77"
    btrain, bval, btest = (read_jsonl(src / f"{s}.jsonl") for s in ("train", "validation", "test"))
    labels = sorted(random.Random(0).sample(sorted({r["label"] for r in btrain}), 10))
    by = defaultdict(list)
    for r in btrain:
        if r["label"] in labels:
            by[r["label"]].append(r)
    rng = random.Random(0)
    tr, tr_over = [], []
    for lab in labels:
        rows = rng.sample(by[lab], 20)
        tr += rows
        tr_over += rows[:2]
    va = []
    for lab in labels:
        va += [r for r in bval if r["label"] == lab][:4]
    for name, rows in (("bank", tr), ("bank_overfit", tr_over)):
        write_jsonl(d / name / "train.jsonl", rows)
        write_jsonl(d / name / "validation.jsonl", va)
    test = [r for r in btest if r["label"] in labels]
    near_over = [max(chrf(t["text"], r["text"]) for r in tr_over) for t in test]
    near_all = [max(chrf(t["text"], r["text"]) for r in tr) for t in test]
    fam = sorted(range(len(test)), key=lambda i: -near_over[i])[:N_PROMPTS]
    nov = [i for i in sorted(range(len(test)), key=lambda i: near_all[i]) if i not in fam][:N_PROMPTS]
    bps = ([{"prompt": test[i]["text"], "reference": test[i]["label"], "group": "familiar",
             "nearest_chrf_overfit_rows": round(near_over[i], 3)} for i in fam]
           + [{"prompt": test[i]["text"], "reference": test[i]["label"], "group": "novel",
               "nearest_chrf_all_rows": round(near_all[i], 3)} for i in nov])
    write_jsonl(d / "bank_prompt_set.jsonl", bps)
    info["banking77"] = {"labels": labels, "train": len(tr), "overfit_train": len(tr_over), "val": len(va),
                         "prompt_set": dict(Counter(p["group"] for p in bps)),
                         "familiar_nearest_chrf_mean": round(sum(near_over[i] for i in fam) / len(fam), 3),
                         "novel_nearest_chrf_mean": round(sum(near_all[i] for i in nov) / len(nov), 3)}
    (root / "data_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))
    return info


# ------------------------------------------------------------------------------------------ runs

def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def do_runs(root: Path, only: str | None) -> None:
    for s in run_specs(root):
        if only and not s["name"].startswith(only):
            continue
        out = Path(s["run_dir"])
        if (out / "run.json").is_file() and json.loads((out / "run.json").read_text()).get("status") == "completed":
            print(f"skip {s['name']} (done)", flush=True)
            continue
        args = [LORATUNE, "train", "-q", *[f"{k}={v}" for k, v in s["overrides"].items()], f"output_dir={out}"]
        print(f"== {s['name']} {time.strftime('%H:%M:%S')} load {loadavg()}\n   {' '.join(args[1:])}", flush=True)
        t = time.perf_counter()
        la0 = loadavg()
        proc = subprocess.run(args, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True)
        wall = time.perf_counter() - t
        print(f"   rc {proc.returncode} in {wall:.0f}s; stderr tail: {proc.stderr[-600:]}", flush=True)
        meta = {"command": " ".join(["loratune", *args[1:]]), "rc": proc.returncode, "process_s": round(wall, 1),
                "load_start": la0, "load_end": loadavg()}
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_meta.json").write_text(json.dumps(meta, indent=2))
        diag = subprocess.run([LORATUNE, "diagnose", "--json", str(out)], capture_output=True, text=True)
        (out / "diagnose.json").write_text(diag.stdout)
        text = subprocess.run([LORATUNE, "diagnose", str(out)], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "140"})
        (out / "diagnose.txt").write_text(text.stdout + text.stderr)
        print(text.stdout[:3000], flush=True)


# ------------------------------------------------------------------------------------------ throughput

TP_STEPS = 6


def tp_child_trl(root: Path, steps: int, seed: int, out: Path, bf16: bool = False) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from loratune.config import load_config
    from loratune.models import load_causal_lm, load_tokenizer

    t_proc = time.perf_counter()
    cfg = load_config(None, ["task=causal-lm", "max_length=96"])
    tok = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, tok.pad_token_id)
    # the GGUF is dequantised to float32 on load, but transformers keeps a GGUF `hf_quantizer` on the model and
    # Trainer refuses to train "a GGUF-quantized model"; the weights are plain float32, so drop the tag
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    rows = read_jsonl(root / "data" / "instr" / "train.jsonl")
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                             "completion": [{"role": "assistant", "content": r["completion"]}]} for r in rows])
    args = SFTConfig(output_dir=str(out / "trl"), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-3,
                     lr_scheduler_type="linear", warmup_steps=round(0.06 * steps), weight_decay=0.01,
                     max_grad_norm=1.0, optim="adamw_torch", max_length=96, completion_only_loss=True,
                     packing=False, train_sampling_strategy="group_by_length", use_cpu=True, bf16=bf16,
                     report_to="none", save_strategy="no", eval_strategy="no", logging_steps=steps, seed=seed,
                     disable_tqdm=True, dataloader_num_workers=0,
                     # TRL turns activation checkpointing on by default (a forward recomputed in the backward);
                     # loratune's loop does not checkpoint, so off here for a like-for-like step
                     gradient_checkpointing=False)
    peft_cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                          task_type="CAUSAL_LM")
    step_times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            step_times.append(time.perf_counter() - self.t)

    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg,
                         callbacks=[Timer()])
    tds = trainer.train_dataset
    cm = tds["completion_mask"] if "completion_mask" in tds.column_names else None
    tokens = sum(min(len(x), 96) for x in tds["input_ids"])
    comp = sum(sum(m[:96]) for m in cm) if cm is not None else None
    t = time.perf_counter()
    res = trainer.train()
    train_s = time.perf_counter() - t
    n = steps * 4
    json.dump({"arm": "trl-bf16" if bf16 else "trl", "trl": __import__("trl").__version__, "steps": steps,
               "examples": n,
               "examples_per_s": n / sum(step_times), "mean_step_s": sum(step_times) / len(step_times),
               "train_s": train_s, "train_examples_per_s_incl_overhead": n / train_s,
               "final_train_loss": res.training_loss, "tokens_in_data": tokens, "completion_tokens_in_data": comp,
               "threads": torch.get_num_threads(), "process_s": time.perf_counter() - t_proc,
               "trainable": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)},
              open(out / "result.json", "w"))


def tp_arm(root: Path, arm: str, steps: int, seed: int, rnd: int) -> dict:
    out = root / "throughput" / f"r{rnd}-{arm}"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    la0 = loadavg()
    t = time.perf_counter()
    if arm in TP_TRL_ARMS:
        proc = subprocess.run([PY, __file__, "--root", str(root), "_trl_child", "--steps", str(steps),
                               "--seed", str(seed), "--out", str(out), *(["--bf16"] if arm == "trl-bf16" else [])],
                              capture_output=True, text=True, env=env)
        ok = proc.returncode == 0 and (out / "result.json").is_file()
        res = json.loads((out / "result.json").read_text()) if ok else {"error": proc.stderr[-2000:]}
    else:
        run_dir = out / "run"
        ov = {**INSTR_COMMON, **HEALTHY, "dataset_name": str(root / "data" / "instr"), "max_steps": steps,
              "eval_steps": steps, "train_eval_size": 4, "max_eval_samples": 4, "seed": seed,
              "output_dir": str(run_dir)}
        ov.pop("max_new_tokens")
        args = [LORATUNE, "train", "-q", *[f"{k}={v}" for k, v in ov.items()]]
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
        ok = proc.returncode == 0
        if ok:
            run = json.loads((run_dir / "run.json").read_text())
            res = {"arm": "loratune", "steps": run["steps_done"], "examples": run["examples_seen"],
                   "examples_per_s": run["examples_per_s"], "mean_step_s": run["mean_step_s"],
                   "train_s_incl_evals": run["wall_s"], "tokens_in_data": run["tokens"]["train"],
                   "completion_tokens_in_data": run["tokens"]["train_completion"],
                   "truncated": run["truncated"], "threads": run["threads"],
                   "final_train_loss": run["final"].get("train/loss"),
                   "trainable": run["params"]["trainable"], "precision": run["precision"]["dtype"],
                   "command": " ".join(["loratune", *args[1:]])}
        else:
            res = {"error": proc.stderr[-2000:]}
    res.update({"round": rnd, "arm": arm, "process_wall_s": round(time.perf_counter() - t, 1), "load_start": la0,
                "load_end": loadavg()})
    print(json.dumps(res), flush=True)
    return res


def throughput(root: Path, rounds: int, steps: int, start: int = 0, arms: tuple[str, ...] = ("loratune", "trl")) -> None:
    """Rounds start..start+rounds-1, appended to throughput.json (start > 0: after an earlier call's rounds); the
    arms' order reversed every other round."""
    prev = root / "throughput.json"
    results = [r for r in json.loads(prev.read_text()) if r["round"] < start] if start and prev.is_file() else []
    for rnd in range(start, start + rounds):
        order = arms if rnd % 2 == 0 else arms[::-1]
        for arm in order:
            print(f"== throughput round {rnd} {arm} {time.strftime('%H:%M:%S')} load {loadavg()}", flush=True)
            results.append(tp_arm(root, arm, steps, 42, rnd))
            (root / "throughput.json").write_text(json.dumps(results, indent=2))


# ------------------------------------------------------------------------------------------ report

def hist(run_dir: Path) -> list[dict]:
    p = run_dir / "history.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []


def top_verdict(diag_json: str) -> dict:
    """The top verdict of `loratune diagnose --json`, its findings in order, and the evidence that passed."""
    try:
        d = json.loads(diag_json)["runs"][0]
    except Exception as exc:
        return {"error": f"no diagnose json ({exc})"}
    findings = [x for x in d.get("findings", []) if not x.get("suppressed_by")]
    top = findings[0] if findings else {}
    return {"verdict": d.get("verdict"), "top": top.get("verdict"), "confidence": top.get("confidence"),
            "confidence_label": top.get("confidence_label"), "moves": top.get("moves"),
            "evidence": [e["text"] for e in top.get("evidence", []) if e.get("passed")],
            "findings": [{"rule_id": x.get("rule_id"), "verdict": x.get("verdict"),
                          "confidence": x.get("confidence"), "tentative": x.get("tentative")} for x in findings],
            "suppressed": [x.get("rule_id") for x in d.get("findings", []) if x.get("suppressed_by")]}


def summarise(spec: dict) -> dict:
    rd = Path(spec["run_dir"])
    h = hist(rd)
    run = json.loads((rd / "run.json").read_text()) if (rd / "run.json").is_file() else {}
    curve = []
    for p in h:
        row = {"step": p["step"], "epoch": round(p.get("epoch", 0), 2), "train_loss": p.get("train/loss"),
               "train_eval_loss": p.get("train_eval/loss"), "val_loss": p.get("val/loss"),
               "val_ppl": p.get("val/perplexity"), "val_token_acc": p.get("val/token_accuracy")}
        for g in GROUPS:
            for m in PROMPT_METRICS:
                row[f"{g}_{m}"] = p.get(f"val/prompt_{g}_{m}")
        if row["familiar_chrf"] is not None and row["novel_chrf"] is not None:
            row["gap_chrf"] = row["familiar_chrf"] - row["novel_chrf"]
        if "val/macro_f1" in p:
            row.update({"val_macro_f1": p["val/macro_f1"], "val_unknown_rate": p.get("val/unknown_rate")})
        curve.append(row)
    diag = top_verdict((rd / "diagnose.json").read_text()) if (rd / "diagnose.json").is_file() else {}
    meta = json.loads((rd / "bench_meta.json").read_text()) if (rd / "bench_meta.json").is_file() else {}
    return {"name": spec["name"], "dataset": spec["dataset"], "kind": spec["kind"], "overrides": spec["overrides"],
            "status": run.get("status"), "reason": run.get("reason"), "steps_done": run.get("steps_done"),
            "rows": run.get("rows"), "params": run.get("params"), "adapter_step": run.get("adapter_step"),
            "examples_per_s": run.get("examples_per_s"), "mean_step_s": run.get("mean_step_s"),
            "wall_s": run.get("wall_s"), "truncated": run.get("truncated"), "precision": run.get("precision"),
            "meta": meta, "curve": curve, "diagnose": diag,
            "diagnose_text": (rd / "diagnose.txt").read_text() if (rd / "diagnose.txt").is_file() else None}


def f(x, nd=3) -> str:
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def report(root: Path) -> None:
    runs = [summarise(s) for s in run_specs(root) if (Path(s["run_dir"]) / "run.json").is_file()]
    tp = json.loads((root / "throughput.json").read_text()) if (root / "throughput.json").is_file() else []
    info = json.loads((root / "data_info.json").read_text()) if (root / "data_info.json").is_file() else {}
    out = {"data": info, "runs": runs, "throughput": tp}
    (RESULTS / "sft.json").write_text(json.dumps(out, indent=1, default=str))
    (root / "tables.md").write_text(tables_md(runs, tp))
    print(f"wrote {RESULTS / 'sft.json'} ({len(runs)} runs, {len(tp)} throughput arms), {root / 'tables.md'}")


def knobs(o: dict) -> str:
    return (f"r={o['r']} a={o['lora_alpha']} {o['target_modules']} lr={o['learning_rate']:g}, bs {o['per_device_train_batch_size']}"
            f", len {o['max_length']}")


def tables_md(runs: list[dict], tp: list[dict]) -> str:
    """The tables of bench/results/sft.md (the prose around them is written by hand)."""
    lines: list[str] = []
    for ds in ("instructions", "banking77"):
        rs = [r for r in runs if r["dataset"] == ds]
        if not rs:
            continue
        gen = ds == "banking77"
        lines += [f"### {ds}: summary", "",
                  "| run | config | train rows | steps (epochs) | val loss step 0 -> final (best) | "
                  + ("val macro-F1 final (best) | unknown final | " if gen else "")
                  + "chrF familiar / novel final | gap step 0 -> final (max) | diagnose verdict (confidence) |",
                  "|---|---|---|---|---|" + ("---|---|" if gen else "") + "---|---|---|"]
        for r in rs:
            c = r["curve"]
            if not c:
                continue
            first, last = c[0], c[-1]
            gaps = [p.get("gap_chrf") for p in c if p.get("gap_chrf") is not None]
            best_val = min(p["val_loss"] for p in c[1:]) if len(c) > 1 else None
            row = (f"| {r['kind']} | {knobs(r['overrides'])} | {r['rows']['train']} | {r['steps_done']} "
                   f"({last['epoch']:.1f}) | {f(first['val_loss'])} -> {f(last['val_loss'])} ({f(best_val)}) | ")
            if gen:
                best_f1 = max(p.get("val_macro_f1") or 0 for p in c)
                row += f"{f(last.get('val_macro_f1'))} ({f(best_f1)}) | {f(last.get('val_unknown_rate'), 2)} | "
            d = r["diagnose"]
            row += (f"{f(last['familiar_chrf'])} / {f(last['novel_chrf'])} | {f(first.get('gap_chrf'))} -> "
                     f"{f(last.get('gap_chrf'))} ({f(max(gaps) if gaps else None)}) | "
                     f"{d.get('verdict')}: {d.get('top')} ({f(d.get('confidence'), 2)}, {d.get('confidence_label')}) |")
            lines.append(row)
        lines.append("")
        for r in rs:
            lines += [f"#### {r['name']} curve", "",
                      "| step | epoch | train loss | train-eval loss | val loss | val ppl | val tok acc | "
                      + ("val macro-F1 | unknown | " if gen else "")
                      + "chrF fam | chrF nov | gap | EM fam | EM nov | len ratio fam/nov | repetition fam/nov |",
                      "|---|---|---|---|---|---|---|" + ("---|---|" if gen else "") + "---|---|---|---|---|---|---|"]
            for p in r["curve"]:
                lines.append(
                    f"| {p['step']} | {p['epoch']:.1f} | {f(p['train_loss'])} | {f(p['train_eval_loss'])} | "
                    f"{f(p['val_loss'])} | {f(p['val_ppl'], 2)} | {f(p['val_token_acc'])} | "
                    + (f"{f(p.get('val_macro_f1'))} | {f(p.get('val_unknown_rate'), 2)} | " if gen else "")
                    + f"{f(p['familiar_chrf'])} | {f(p['novel_chrf'])} | {f(p.get('gap_chrf'))} | "
                    f"{f(p['familiar_exact_match'], 2)} | {f(p['novel_exact_match'], 2)} | "
                    f"{f(p['familiar_len_ratio'], 2)} / {f(p['novel_len_ratio'], 2)} | "
                    f"{f(p['familiar_repetition'], 2)} / {f(p['novel_repetition'], 2)} |")
            d = r["diagnose"]
            lines += ["", f"diagnose: **{d.get('verdict')}**: {d.get('top')} (confidence {f(d.get('confidence'), 2)}); "
                      f"moves: {', '.join(d.get('moves') or [])}; other findings: "
                      f"{', '.join(x['rule_id'] for x in d.get('findings', [])[1:]) or 'none'}", "",
                      "evidence that passed: " + "; ".join(d.get("evidence") or []), "",
                      f"wall {f(r['wall_s'], 0)} s in the loop ({f(r['meta'].get('process_s'), 0)} s process), "
                      f"{f(r['examples_per_s'], 2)} examples/s over its steps, load average "
                      f"{r['meta'].get('load_start')} -> {r['meta'].get('load_end')}", ""]
    if tp:
        lines += ["### throughput", "",
                  "| round | arm | examples/s (step-timed) | mean step s | steps | tokens in data (completion) | "
                  "process wall s | load avg start -> end |", "|---|---|---|---|---|---|---|---|"]
        for t in tp:
            lines.append(f"| {t['round']} | {t['arm']} | {f(t.get('examples_per_s'), 3)} | {f(t.get('mean_step_s'), 2)} | "
                         f"{t.get('steps')} | {t.get('tokens_in_data')} ({t.get('completion_tokens_in_data')}) | "
                         f"{t.get('process_wall_s')} | {t.get('load_start')} -> {t.get('load_end')} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/sft_bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare")
    r = sub.add_parser("runs")
    r.add_argument("--only")
    t = sub.add_parser("throughput")
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--steps", type=int, default=TP_STEPS)
    t.add_argument("--start-round", type=int, default=0)
    t.add_argument("--arms", default="loratune,trl",
                   help="of loratune, " + ", ".join(TP_TRL_ARMS) + " (trl-bf16: SFTConfig(bf16=True), autocast on CPU)")
    sub.add_parser("report")
    c = sub.add_parser("_trl_child")
    c.add_argument("--steps", type=int)
    c.add_argument("--seed", type=int)
    c.add_argument("--out")
    c.add_argument("--bf16", action="store_true")
    a = ap.parse_args(argv)
    root = Path(a.root)
    root.mkdir(parents=True, exist_ok=True)
    if a.cmd == "prepare":
        prepare(root)
    elif a.cmd == "runs":
        do_runs(root, a.only)
    elif a.cmd == "throughput":
        throughput(root, a.rounds, a.steps, a.start_round, tuple(a.arms.split(",")))
    elif a.cmd == "report":
        report(root)
    elif a.cmd == "_trl_child":
        tp_child_trl(root, a.steps, a.seed, Path(a.out), a.bf16)
    return 0


if __name__ == "__main__":
    sys.exit(main())
