"""Training-speed levers of loratune's loop, one at a time, each against the same baseline (issue 17).

    python bench/levers.py                          # every lever, 3 rounds, about 8 min on 2 busy cores
    python bench/levers.py --levers bf16,eager --rounds 2 --steps 20

A round is one fresh subprocess. It builds config (a) of bench/throughput.py (MiniLM-L6, r=8 on attn.q +
attn.v in every layer + ffn in the top 2, pooler + classifier trained) once per arm with loratune's own
functions (same seed: identical initial weights), takes one list of length-grouped BANKING77 train
batches (batch 32) and runs them step by step: at every step each arm does that step on that batch, in
a shuffled order, so the arms of a step ran within a second of each other under the same load (the 2
cores are shared with other jobs; separate processes a minute apart measured 2x apart for identical
code). A step is exactly train.py's: collate, forward, loss, backward, clip, AdamW, schedule. The gain
of a lever is the median over steps of baseline step time / lever step time, after `--warmup` steps.

  baseline   the loop as train.py ran it before issue 17: SDPA attention (transformers' default for BERT),
             for-loop AdamW (torch's default on CPU), the loss and grad norm read back (`float()`) every
             step, float32
  eager      attn_implementation="eager" (what SDPA saves)
  foreach    AdamW(foreach=True)
  fused      AdamW(fused=True)
  no_sync    no `float()` per step: loss and grad norm stay tensors until the end of the round
  compile    torch.compile(model); compile_s (its warmup steps beyond their steady time) reported apart,
             and the steps it takes to pay that back
  bf16       torch.autocast("cpu", bfloat16) over the forward, head and loss in float32 (precision.py)
  eval_bs64  evaluation, not a training step: predict_logits over validation at eval batch 64 vs 256
  uniform_dropout  dropout masks from 16-bit lanes of random 64-bit words instead of bernoulli_ (kernels.py;
                   what train.py runs on CPU)
  rand_dropout     the kernel uniform_dropout was before (2026-12-03): masks from one float32 `torch.rand` draw
                   per element, kept here to measure the lanes against
  lane_attention   the attention-probability dropout from the lanes too (kernels.lane_attention; what train.py
                   runs on CPU), instead of SDPA's bernoulli_
  bf16_weights     the frozen base's linear weights held in bf16 (autocast casts them for every matmul anyway;
                   precision.frozen_weights_in_bf16, what train.py runs under bf16)
  adapter_inputs   peft's cast of a LoRA layer's input to float32 turned off under autocast
                   (precision.adapter_inputs_as_is; what train.py and sft.py run under bf16)
  pooled_block     the last block at the first token only (pooled_block.attach; what train.py runs on a
                   first-token classifier): its query, output and feed-forward at the one position the head reads
  sfc64_words      dropout masks' random words from numpy's SFC64 (seeded per mask from torch's generator) instead of
                   torch's mt19937 `random_` (kernels.WORDS = "numpy")
  ln_bf16          the ceiling of one shared bf16 cast per LayerNorm output (measured, not built): every encoder
                   LayerNorm returns bf16 under autocast, so q, k, v, LoRA and the feed-forward stop casting the
                   same float32 tensor each on their own (and the residual stream is bf16 too)

An arm may combine levers with `+` (`bf16+uniform_dropout`), and `--baseline` names the arm the others are
timed against (default: `baseline`; e.g. `--baseline bf16` gives each lever's gain on top of bf16).

This script only times (each arm's mean loss over its last 5 steps is printed as a sanity check); the
quality of a lever that changes numerics is checked with val macro-F1 over seeds (bench/throughput.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77"
if not DATA.is_dir():
    DATA = Path("/work/shared/data/banking77")
LEVERS = ("eager", "foreach", "fused", "no_sync", "compile", "bf16", "eval_bs64", "uniform_dropout", "rand_dropout",
          "lane_attention", "bf16_weights", "adapter_inputs", "pooled_block", "ln_bf16", "sfc64_words")


def rand_dropout_forward(self, x):
    """uniform_dropout's first kernel (2026-12-03): keep an element when its float32 `torch.rand` draw is >= p."""
    import torch

    if not self.training or self.p == 0.0:
        return x
    keep = (torch.rand(x.shape, device=x.device) >= self.p).to(x.dtype).mul_(1.0 / (1.0 - self.p))
    return x * keep


def sfc64_keep_mask(shape, p, device="cpu"):
    """kernels.keep_mask with its random words from numpy's SFC64 (seeded per mask by two words of torch's generator)
    instead of torch's mt19937 `random_`: ~2 ns a word against ~4.4 alone (measured, not built: lever sfc64_words)."""
    import math

    import numpy as np
    import torch

    from loratune.kernels import LANE, LANE_VALUES, LANES_PER_WORD

    n = math.prod(shape)
    dropped_values = round(p * LANE_VALUES)
    seed = [w & (2 ** 64 - 1) for w in torch.empty(2, dtype=torch.int64).random_(-2 ** 63, None).tolist()]
    words = torch.from_numpy(np.random.SFC64(seed).random_raw(-(-n // LANES_PER_WORD)).view(np.int64))
    lanes = words.view(LANE)[:n].view(shape)
    return lanes >= torch.iinfo(LANE).min + dropped_values, LANE_VALUES / (LANE_VALUES - dropped_values)


TORCH_KEEP_MASK = None  # kernels.keep_mask as loratune ships it (set by one_round, before any arm swaps it)


class Arm:
    """One model + optimizer trained the way `name` says."""

    def __init__(self, name: str, cfg, space, steps: int):
        import torch

        from loratune import kernels
        from loratune import precision as precision_mod
        from loratune.adapt import HEAD_NAMES, apply_adapter
        from loratune.models import load_classifier
        from loratune.train import build_optimizer, seed_everything

        self.name = name
        parts = set(name.split("+"))
        unknown = parts - set(LEVERS) - {"baseline"}
        if unknown:
            raise SystemExit(f"unknown lever(s) {sorted(unknown)}; choose from {', '.join(LEVERS)}")
        seed_everything(42)
        if "eager" in parts:
            import transformers

            auto = transformers.AutoModelForSequenceClassification
            original = auto.from_pretrained
            auto.from_pretrained = lambda *a, **k: original(*a, **{**k, "attn_implementation": "eager"})
            try:
                base = load_classifier(cfg.model, len(space), False, dict(enumerate(space.labels)))
            finally:
                auto.from_pretrained = original
        else:
            base = load_classifier(cfg.model, len(space), False, dict(enumerate(space.labels)))
        self.model, _ = apply_adapter(base, cfg.adapter)
        self.model.train()
        if "uniform_dropout" in parts:
            kernels.uniform_dropout(self.model, "cpu")
        if "lane_attention" in parts:
            kernels.lane_attention(self.model, "cpu")
        if "rand_dropout" in parts:
            kernels.uniform_dropout(self.model, "cpu")
            for module in self.model.modules():
                if type(module) is kernels.UniformDropout:
                    module.forward = rand_dropout_forward.__get__(module)
        if "adapter_inputs" in parts:
            precision_mod.adapter_inputs_as_is(self.model)
        if "ln_bf16" in parts:
            for name, module in self.model.named_modules():
                if isinstance(module, torch.nn.LayerNorm) and ".encoder." in name:
                    module.register_forward_hook(lambda m, a, out: out.to(torch.bfloat16)
                                                 if torch.is_autocast_enabled("cpu") else out)
        if "pooled_block" in parts:
            from loratune import pooled_block

            assert pooled_block.attach(self.model)["applied"]
        if "bf16_weights" in parts:
            precision_mod.frozen_weights_in_bf16(self.model, HEAD_NAMES)
        device = torch.device("cpu")
        self.opt, self.sched = build_optimizer(self.model, cfg, steps, device)
        # the optimizer is pinned per arm (train.build_optimizer's groups; its own choice may change)
        from transformers import get_scheduler

        groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in self.opt.param_groups]
        flags = {"foreach": True} if "foreach" in parts else {"fused": True} if "fused" in parts else {"foreach": False}
        self.opt = torch.optim.AdamW(groups, lr=cfg.train.learning_rate, **flags)
        self.sched = get_scheduler("linear", self.opt, num_warmup_steps=0, num_training_steps=steps)
        self.autocast = "bf16" in parts or "bf16_weights" in parts
        self.sfc64 = "sfc64_words" in parts  # kernels.keep_mask swapped for sfc64_keep_mask while this arm steps
        self.no_sync = "no_sync" in parts
        if self.autocast:
            precision_mod.head_in_fp32(self.model, HEAD_NAMES, "cpu")
        self.forward = torch.compile(self.model) if "compile" in parts else self.model
        self.times: list[float] = []
        self.losses: list = []

    def step(self, batch, target) -> None:
        import torch

        from loratune.train import loss_fn

        from loratune import kernels

        kernels.keep_mask = sfc64_keep_mask if self.sfc64 else TORCH_KEEP_MASK
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.forward(**batch).logits
        loss = loss_fn(logits.float(), target, False)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.no_sync:
            self.losses.append(loss.detach())
        else:
            self.losses.append(float(loss.detach()))
            float(norm)
        self.times.append(time.perf_counter() - t)

    def final_loss(self) -> float:
        return float(sum(float(x) for x in self.losses[-5:]) / len(self.losses[-5:]))


def one_round(levers: list[str], steps: int, warmup: int, seed: int, baseline: str = "baseline") -> dict:
    global TORCH_KEEP_MASK
    import torch

    from loratune import kernels

    TORCH_KEEP_MASK = kernels.keep_mask

    from loratune import api
    from loratune.models import load_tokenizer
    from loratune.train import batch_order, collate, cpu_cores, encode, predict_logits

    cfg = api.load_config(None, [f"dataset_name={DATA}", "target_modules=[attn.q, attn.v, ffn@top:2]",
                                 "warmup_ratio=0", "weight_decay=0", "learning_rate=1e-3"])
    torch.set_num_threads(cpu_cores())
    dataset = api.prepare(cfg)
    space = dataset.label_space
    tok = load_tokenizer(cfg.model)
    enc = encode(tok, dataset.train, space, cfg.model.max_length)
    total = steps + max(warmup, 6)
    arms = [Arm(name, cfg, space, total) for name in [baseline] + [x for x in levers if x not in ("eval_bs64", baseline)]]
    rng = random.Random(seed)
    batches = batch_order(enc.lengths, 32, rng, True)[:total]
    device = torch.device("cpu")
    for rows in batches:
        batch = collate([enc.ids[j] for j in rows], tok.pad_token_id, device)
        target = torch.from_numpy(enc.targets[rows])
        for arm in rng.sample(arms, len(arms)):
            arm.step(batch, target)
    base = arms[0]
    out = {"tokens_per_step": statistics.mean(32 * max(len(enc.ids[j]) for j in b) for b in batches),
           "threads": torch.get_num_threads(), "load": os.getloadavg()[0], "arms": {}}
    for arm in arms:
        compiled = "compile" in arm.name.split("+")
        w = max(warmup, 6) if compiled else warmup
        ratios = [b / a for a, b in zip(arm.times[w:], base.times[w:])]
        steady = statistics.median(arm.times[w:])
        row = {"step_s": steady, "speedup": statistics.median(ratios), "final_loss": arm.final_loss()}
        if compiled:
            row["compile_s"] = sum(arm.times[:w]) - w * steady
            gain = statistics.median(base.times[w:]) - steady
            row["steps_to_pay_back"] = row["compile_s"] / gain if gain > 0 else None
        out["arms"][arm.name] = row
    if "eval_bs64" in levers:
        val = encode(tok, dataset.validation, space, cfg.model.max_length)
        t_eval: dict[int, list[float]] = {256: [], 64: []}
        for bs in (256, 64, 64, 256):
            t = time.perf_counter()
            predict_logits(base.model, val, bs, tok.pad_token_id, device, False)
            t_eval[bs].append(time.perf_counter() - t)
        out["arms"]["eval_bs64"] = {"eval_s_bs256": statistics.mean(t_eval[256]),
                                    "eval_s_bs64": statistics.mean(t_eval[64]),
                                    "speedup": statistics.mean(t_eval[256]) / statistics.mean(t_eval[64]),
                                    "rows": len(val.ids)}
    return out


WHAT = {"baseline": "the loop before issue 17 (SDPA, for-loop AdamW, float() per step, fp32)",
        "eager": "eager attention instead of SDPA", "foreach": "AdamW(foreach=True)", "fused": "AdamW(fused=True)",
        "no_sync": "no float() per step", "compile": "torch.compile(model)",
        "bf16": "bf16 autocast (emulated: no avx512_bf16 / AMX here)",
        "eval_bs64": "evaluation batch 64 instead of 256 (validation pass)",
        "uniform_dropout": "dropout masks from 16-bit lanes of random words instead of bernoulli_ (kernels.py)",
        "lane_attention": "attention-probability dropout from the lanes (kernels.lane_attention) instead of SDPA's",
        "rand_dropout": "dropout masks from one torch.rand draw per element (uniform_dropout's first kernel)",
        "bf16_weights": "frozen base linear weights stored in bf16",
        "adapter_inputs": "LoRA inputs left in bf16 under autocast (precision.adapter_inputs_as_is)",
        "pooled_block": "the last block at the first token only (pooled_block.attach)",
        "ln_bf16": "encoder LayerNorm outputs in bf16 (the ceiling of one shared cast; not built)",
        "sfc64_words": "dropout masks' words from numpy's SFC64 instead of torch's mt19937 random_"}


def render(paths: list[str], out: Path) -> None:
    """levers.md from one or more levers JSON files (e.g. the cheap levers over 3 rounds, and
    compile + bf16 in a separate, shorter run)."""
    lines = ["# Speed levers, one at a time (issue 17)", "",
             "Each lever against the same baseline, arms interleaved step by step inside one process (see "
             "bench/levers.py). Speed-up = baseline step time / lever step time, median over the timed steps of "
             "a round; > 1 is faster. CPU: AMD EPYC, 2 cores, avx/avx2 only (no avx512_bf16, no AMX), shared "
             "with other engineers' jobs (load average per round below: 7-12 on 2 cores, so differences under "
             "about 10-15% are noise).", "",
             "| lever | what | speed-up per round | median | step s (lever) | load | kept |", "|---|---|---|---|---|---|---|"]
    notes = []
    for path in paths:
        d = json.loads(Path(path).read_text())
        base = d.get("baseline", "baseline")
        cmd = f"`python bench/levers.py --levers {','.join(k for k in d['levers'] if k != base)} " \
              f"--rounds {d['rounds']} --steps {d['steps']} --warmup {d['warmup']}" + \
              ("" if base == "baseline" else f" --baseline {base}") + "`"
        notes.append(f"- {cmd}: {d['elapsed_s'] / 60:.0f} min.")
        for name, v in d["levers"].items():
            if name == base:
                continue
            step = ", ".join(f"{x:.3f}" for x in v.get("step_s") or []) or \
                ", ".join(f"{a:.1f} s vs {b:.1f} s" for a, b in zip(v.get("eval_s_bs64", []), v.get("eval_s_bs256", [])))
            extra = ""
            if v.get("compile_s"):
                extra = f" (compile {', '.join(f'{x:.0f}' for x in v['compile_s'])} s, charged apart)"
            lines.append(f"| {name} | {WHAT.get(name, name)}{extra} | {', '.join(f'{x:.2f}' for x in v['speedup'])} "
                         f"| {v['speedup_median']:.2f}x | {step} | {', '.join(f'{x:.1f}' for x in v['load'])} "
                         f"| {KEPT.get(name, '')} |")
    lines += ["", "Commands:", ""] + notes + [""]
    out.write_text("\n".join(lines), encoding="utf-8")


KEPT = {"eager": "no: SDPA (transformers' default for BERT) stays", "foreach": "no (noise-level)",
        "fused": "no on CPU (noise-level); yes on CUDA (train.py already fuses there)",
        "no_sync": "no: on CPU float() is no device sync; the loop needs the loss per step (divergence, bar)",
        "compile": "no: its compile time is not paid back within a run", "bf16": "no here (`auto` = fp32 on this CPU)",
        "eval_bs64": "no: 256 stays (bigger batches were faster in a separate 4-size sweep)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levers", default=",".join(LEVERS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "levers.json"))
    ap.add_argument("--baseline", default="baseline", help="the arm every other arm is timed against")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--render", nargs="+", metavar="JSON", help="write levers.md from levers JSON files")
    args = ap.parse_args()
    if args.render:
        render(args.render, Path(args.out).with_suffix(".md"))
        return
    if args.child:
        levers, steps, warmup, seed, baseline = args.child
        res = one_round([x for x in levers.split(",") if x], int(steps), int(warmup), int(seed), baseline)
        print("RESULT " + json.dumps(res))
        return
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    rounds, t0 = [], time.perf_counter()
    for rnd in range(args.rounds):
        proc = subprocess.run([sys.executable, __file__, "--child", args.levers, str(args.steps), str(args.warmup),
                               str(42 + rnd), args.baseline], capture_output=True, text=True, env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"round {rnd} failed:\n{proc.stderr[-4000:]}")
        res = json.loads(line[7:])
        rounds.append(res)
        print(f"round {rnd} (load {res['load']:.1f}): " + ", ".join(
            f"{k} {v['speedup']:.2f}x" for k, v in res["arms"].items()), flush=True)
    summary = {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "baseline": args.baseline,
               "elapsed_s": round(time.perf_counter() - t0), "cpu_cores": len(os.sched_getaffinity(0)),
               "levers": {}, "runs": rounds}
    for name in rounds[0]["arms"]:
        rs = [r["arms"][name] for r in rounds]
        row = {"speedup": [round(r["speedup"], 3) for r in rs],
               "speedup_median": round(statistics.median(r["speedup"] for r in rs), 3),
               "load": [round(r["load"], 1) for r in rounds]}
        for key in ("step_s", "final_loss", "compile_s", "steps_to_pay_back", "eval_s_bs256", "eval_s_bs64"):
            if key in rs[0]:
                row[key] = [None if r[key] is None else round(r[key], 3) for r in rs]
        summary["levers"][name] = row
    Path(args.out).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print(json.dumps(summary["levers"], indent=1))


if __name__ == "__main__":
    main()
