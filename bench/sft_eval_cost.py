"""What an SFT evaluation point costs on this machine: the measurement behind `sft.DECODE_STEP_TOKENS`
(the price of one decode step of a generation batch, in tokens of a scoring forward pass) and behind generating
under the run's precision from bf16 frozen weights.

    python bench/sft_eval_cost.py [--out bench/results/sft_eval_cost.json] [--rounds 3]
    python bench/sft_eval_cost.py --gen-batches 16,32,40 --out bench/results/sft_gen_batch.json   # the batch size

On `embedded:smollm2` (SmolLM2-135M) with a LoRA adapter (the default targets) and the demo instruction data,
in one process:
- generation of the 40-prompt demo prompt set (64 new tokens) in float32, under bf16 autocast with float32
  weights, and under autocast with the frozen weights held in bf16 (`precision.frozen_weights_in_bf16`), and
  whether the outputs agree;
- the decode step: 16 prompts at 64 and at 8 new tokens, the difference over the steps between (56 when a row
  ran to 64 tokens; the prompts' own forward pass cancels); the scored token: `sft.evaluate_lm` over 60 training
  rows, seconds per token. Medians of `--rounds`, the arms alternated (a shared machine: read the ratios of
  neighbours).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics as st
import sys
import time
from pathlib import Path

import torch

from loratune import precision as pm
from loratune.adapt import apply_adapter
from loratune.config import load_config
from loratune.generation import load_prompt_set
from loratune.models import load_causal_lm, load_tokenizer
from loratune.sft import DECODE_STEP_TOKENS, GEN_BATCH, LM_HEAD_NAMES, evaluate_lm, generate
from loratune.sft_data import Example, Renderer, Turn, encode_prompts, encode_sft, load_sft_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/sft_eval_cost.json")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--gen-batches", metavar="N,N,...",
                    help="only this: the prompt set generated (bf16 weights, autocast, 64 new tokens) with sft.GEN_BATCH "
                         "set to each N in turn, rounds alternated; seconds and outputs equal to the first N's")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = torch.device("cpu")
    cfg = load_config(None, ["task=causal-lm"])
    tok = load_tokenizer(cfg.model)

    def adapted():
        model, _ = apply_adapter(load_causal_lm(cfg.model, tok.pad_token_id), cfg.adapter, task="causal-lm")
        pm.head_in_fp32(model, LM_HEAD_NAMES, "cpu")  # a no-op outside autocast
        return model.eval()

    torch.manual_seed(0)
    model_fp32 = adapted()
    model = adapted()  # the same weights (a fresh adapter's B is zero); its frozen weights held in bf16
    frozen = pm.frozen_weights_in_bf16(model, LM_HEAD_NAMES, keep_full=False)
    data = load_sft_dataset(cfg.data, seed=0)
    renderer = Renderer.for_tokenizer(tok, cfg.data.chat_template)
    items = load_prompt_set(data.prompt_set)
    prompts = encode_prompts(tok, renderer, [Example((Turn("user", it.prompt),), it.reference) for it in items],
                             cfg.model.max_length)
    rows = encode_sft(tok, renderer, data.train.examples[:60], cfg.model.max_length)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out

    def gen(batch, new, autocast, m=None):
        return timed(lambda: generate(m or model, tok, batch, new, cpu, autocast))

    result: dict = {"argv": sys.argv, "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "prompts": len(prompts), "prompt_tokens": sum(map(len, prompts)), "gen_batch": GEN_BATCH,
                    "frozen_linear_bf16": frozen}
    if args.gen_batches:  # each batch of a generation runs its own decode loop (up to 64 steps): fewer, wider ones
        import loratune.sft as sft_mod

        sizes = [int(x) for x in args.gen_batches.split(",")]
        gen(prompts[:4], 2, True)  # warm
        took: dict[int, list[float]] = {n: [] for n in sizes}
        outs: dict[int, list[str]] = {}
        for r in range(args.rounds):
            for n in (sizes if r % 2 == 0 else sizes[::-1]):
                sft_mod.GEN_BATCH = n  # generate() reads it at each call
                dt, outs[n] = gen(prompts, 64, True)
                took[n].append(round(dt, 2))
                print(f"GEN_BATCH {n}: {dt:.1f} s", flush=True)
        sft_mod.GEN_BATCH = GEN_BATCH
        result.update({"gen_batch_seconds": took, "gen_batch_median_s": {n: st.median(v) for n, v in took.items()},
                       "gen_batch_same_outputs_as_first": {n: sum(a == b for a, b in zip(outs[n], outs[sizes[0]]))
                                                           for n in sizes}})
        print(json.dumps({k: result[k] for k in ("gen_batch_median_s", "gen_batch_same_outputs_as_first")}))
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    # the three ways to generate the prompt set, alternated round by round (the machine is shared: ratios of
    # neighbours, not absolute seconds)
    arms = {"float32": (model_fp32, False), "autocast, float32 weights": (model_fp32, True),
            "autocast, bf16 weights": (model, True)}
    seconds: dict[str, list[float]] = {a: [] for a in arms}
    outputs = {}
    for r in range(args.rounds):
        for arm in (list(arms) if r % 2 == 0 else list(reversed(arms))):
            m, ac = arms[arm]
            dt, outputs[arm] = gen(prompts, 64, ac, m)
            seconds[arm].append(round(dt, 2))
            print(arm, round(dt, 1), flush=True)
    result["prompt_set_generation_s"] = seconds
    med = {a: st.median(v) for a, v in seconds.items()}
    bf16, ac32 = med["autocast, bf16 weights"], med["autocast, float32 weights"]
    result["prompt_set_speedup_bf16_weights"] = {"over float32": round(med["float32"] / bf16, 2),
                                                 "over autocast float32 weights": round(ac32 / bf16, 2)}
    bf = outputs["autocast, bf16 weights"]
    result["same_outputs"] = {f"bf16 weights vs {other}": sum(a == b for a, b in zip(bf, outputs[other]))
                              for other in ("autocast, float32 weights", "float32")} | {"of": len(prompts)}
    del model_fp32
    print(json.dumps(result, indent=1), flush=True)

    first = prompts[:GEN_BATCH]
    gen(first, 2, True)  # warm
    runs: dict[str, list[float]] = {"gen64": [], "gen8": [], "score": []}
    longest = 0  # the decode steps the 64-token batch took: it stops early only when every row has ended
    for _ in range(args.rounds):
        dt, out = gen(first, 64, True)
        runs["gen64"].append(dt)
        longest = max(len(tok(o, add_special_tokens=False)["input_ids"]) for o in out)
        runs["gen8"].append(gen(first, 8, True)[0])
        runs["score"].append(timed(lambda: evaluate_lm("x", model, rows, tok.pad_token_id, cpu, True))[0])
    med = {k: st.median(v) for k, v in runs.items()}
    steps = min(64, longest) - 8
    step_s = (med["gen64"] - med["gen8"]) / steps
    token_s = med["score"] / int(rows.lengths.sum())
    result.update({"rounds": runs, "scored_tokens": int(rows.lengths.sum()), "longest_output_tokens": longest,
                   "decode_step_ms": round(step_s * 1e3, 2), "scored_token_ms": round(token_s * 1e3, 4),
                   "decode_step_in_scored_tokens": round(step_s / token_s, 1),
                   "DECODE_STEP_TOKENS": DECODE_STEP_TOKENS})
    print(json.dumps({k: result[k] for k in ("decode_step_ms", "scored_token_ms", "decode_step_in_scored_tokens")}))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
