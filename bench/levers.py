"""Training-speed levers of loratune's loop, one at a time, each against the same baseline (issue 17).

    python bench/levers.py                          # every lever, 3 rounds, about 15 min on 2 busy cores
    python bench/levers.py --levers bf16,eager --rounds 2 --steps 20

Each arm is a fresh subprocess that builds config (a) of bench/throughput.py (MiniLM-L6, r=8 on attn.q +
attn.v in every layer + ffn in the top 2, head trained) with loratune's own functions, takes the same
length-grouped batches of BANKING77 train (batch 32, seed 42) and times `--steps` optimizer steps after
`--warmup` untimed ones, exactly as train.py's loop does them (collate, forward, loss, backward, clip,
AdamW, schedule). Rounds alternate the arm order; the gain of a lever is the baseline's median step time
over the lever's, within a round. Arms:

  baseline   train.py as it is: SDPA attention (transformers' default for BERT), for-loop AdamW (torch's
             default on CPU), the loss and the grad norm read back (`float()`) every step, float32
  eager      attn_implementation="eager" (what SDPA saves)
  foreach    AdamW(foreach=True)
  fused      AdamW(fused=True)
  no_sync    no `float()` per step: loss and grad norm stay tensors until the end
  compile    torch.compile(model); compile_s (the first, compiling steps) reported apart and charged
  bf16       torch.autocast("cpu", bfloat16) over the forward (head and loss float32)
  eval_bs64  evaluation (not a training step): predict_logits over validation at eval batch 64 vs 256

This script only times (and reports each arm's mean loss over its last 5 steps as a sanity check); the
quality of a lever that changes numerics is checked with bench/throughput.py's val macro-F1 over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/banking77")
LEVERS = ("eager", "foreach", "fused", "no_sync", "compile", "bf16", "eval_bs64")


def arm(name: str, steps: int, warmup: int) -> dict:
    import random

    import torch

    from loratune import api, precision as precision_mod
    from loratune.adapt import HEAD_NAMES, apply_adapter
    from loratune.models import load_classifier, load_tokenizer
    from loratune.train import (batch_order, build_optimizer, collate, cpu_cores, encode, loss_fn, predict_logits,
                                seed_everything)

    cfg = api.load_config(None, [f"dataset_name={DATA}", "target_modules=[attn.q, attn.v, ffn@top:2]",
                                 "warmup_ratio=0", "weight_decay=0", f"max_steps={steps + warmup}"])
    torch.set_num_threads(cpu_cores())
    dataset = api.prepare(cfg)
    space = dataset.label_space
    seed_everything(42)
    tok = load_tokenizer(cfg.model)
    if name == "eager":
        import transformers

        transformers.AutoModelForSequenceClassification.from_pretrained = _with_eager(
            transformers.AutoModelForSequenceClassification.from_pretrained)
    base = load_classifier(cfg.model, len(space), False, dict(enumerate(space.labels)))
    model, _ = apply_adapter(base, cfg.adapter)
    model.train()
    device = torch.device("cpu")
    enc = encode(tok, dataset.train, space, cfg.model.max_length)
    if name == "eval_bs64":
        val = encode(tok, dataset.validation, space, cfg.model.max_length)
        out = {}
        for bs in (256, 64, 256, 64):  # alternated inside the arm; the median of each
            t = time.perf_counter()
            predict_logits(model, val, bs, tok.pad_token_id, device, False)
            out.setdefault(bs, []).append(time.perf_counter() - t)
        return {"eval_s_bs256": statistics.median(out[256]), "eval_s_bs64": statistics.median(out[64]),
                "rows": len(val.ids)}
    opt, sched = build_optimizer(model, cfg, steps + warmup, device)
    if name in ("foreach", "fused"):
        opt = torch.optim.AdamW(opt.param_groups, lr=cfg.train.learning_rate, **{name: True})
        from transformers import get_scheduler
        sched = get_scheduler("linear", opt, num_warmup_steps=0, num_training_steps=steps + warmup)
    autocast = name == "bf16"
    if autocast:
        precision_mod.head_in_fp32(model, HEAD_NAMES, "cpu")
    fwd = torch.compile(model) if name == "compile" else model
    rng = random.Random(42)
    batches = [b for _ in range(4) for b in batch_order(enc.lengths, 32, rng, True)][: steps + warmup]
    times, losses = [], []
    for i, rows in enumerate(batches):
        t = time.perf_counter()
        batch = collate([enc.ids[j] for j in rows], tok.pad_token_id, device)
        target = torch.from_numpy(enc.targets[rows])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = fwd(**batch).logits
        loss = loss_fn(logits.float(), target, False)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if name == "no_sync":
            losses.append(loss.detach())
        else:
            losses.append(float(loss.detach()))
            float(norm)
        times.append(time.perf_counter() - t)
    final_loss = float(torch.stack(losses[-5:]).mean()) if name == "no_sync" else statistics.mean(losses[-5:])
    timed = times[warmup:]
    return {"step_s": statistics.median(timed), "step_s_mean": statistics.mean(timed),
            "warmup_s": sum(times[:warmup]), "compile_s": sum(times[:warmup]) - warmup * statistics.median(timed)
            if name == "compile" else None, "final_loss": final_loss,
            "tokens_per_step": statistics.mean(32 * max(len(enc.ids[j]) for j in b) for b in batches[warmup:])}


def _with_eager(from_pretrained):
    def wrapped(*a, **k):
        k["attn_implementation"] = "eager"
        return from_pretrained(*a, **k)
    return wrapped


def child(name: str, steps: int, warmup: int) -> None:
    load0 = os.getloadavg()[0]
    res = arm("baseline" if name == "baseline" else name, steps, warmup)
    res.update({"arm": name, "load": load0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    print("RESULT " + json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "levers.json"))
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    levers = [x for x in args.levers.split(",") if x]
    train_arms = ["baseline"] + [x for x in levers if x != "eval_bs64"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    runs = []
    for rnd in range(args.rounds):
        order = train_arms if rnd % 2 == 0 else list(reversed(train_arms))
        if "eval_bs64" in levers:
            order = order + ["eval_bs64"]
        for name in order:
            warmup = max(args.warmup, 6) if name == "compile" else args.warmup
            proc = subprocess.run([sys.executable, __file__, "--child", name, str(args.steps), str(warmup)],
                                  capture_output=True, text=True, env=env)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{name} failed:", proc.stderr[-3000:], file=sys.stderr)
                continue
            res = {**json.loads(line[7:]), "round": rnd}
            runs.append(res)
            print(f"round {rnd} {name:10s} " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()
                                                          if isinstance(v, float)), flush=True)
    summary = {"steps": args.steps, "rounds": args.rounds, "levers": {}, "runs": runs}
    for name in levers:
        if name == "eval_bs64":
            rs = [r for r in runs if r["arm"] == name]
            if rs:
                summary["levers"][name] = {"speedup": [round(r["eval_s_bs256"] / r["eval_s_bs64"], 3) for r in rs],
                                           "eval_s_bs256": [round(r["eval_s_bs256"], 2) for r in rs],
                                           "eval_s_bs64": [round(r["eval_s_bs64"], 2) for r in rs]}
            continue
        per_round = []
        for rnd in range(args.rounds):
            b = [r for r in runs if r["round"] == rnd and r["arm"] == "baseline"]
            x = [r for r in runs if r["round"] == rnd and r["arm"] == name]
            if b and x:
                per_round.append((b[0], x[0]))
        if per_round:
            gains = [b["step_s"] / x["step_s"] for b, x in per_round]
            summary["levers"][name] = {"speedup": [round(g, 3) for g in gains],
                                       "speedup_median": round(statistics.median(gains), 3),
                                       "step_s": [round(x["step_s"], 3) for _, x in per_round],
                                       "baseline_step_s": [round(b["step_s"], 3) for b, _ in per_round],
                                       "final_loss": [round(x["final_loss"], 3) for _, x in per_round],
                                       "baseline_final_loss": [round(b["final_loss"], 3) for b, _ in per_round],
                                       "compile_s": [round(x["compile_s"], 1) for _, x in per_round
                                                     if x.get("compile_s") is not None] or None,
                                       "peak_rss_mb": [round(x["peak_rss_mb"]) for _, x in per_round],
                                       "load": [round(x["load"], 1) for _, x in per_round]}
    Path(args.out).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(json.dumps(summary["levers"], indent=2))


if __name__ == "__main__":
    main()
