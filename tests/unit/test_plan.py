"""`loratune plan`: the memory and FLOPs arithmetic against hand-computed cases, the published Llama-2-7B figures
(docs/planning.md), Phi-3's fused modules, and bad input (UserError, exit 2, with a fix). Models are built from
their configs on the meta device: no download, no weights."""

from __future__ import annotations

import json
import math

import pytest

from loratune import params, plan
from loratune.errors import UserError
from loratune.plan import LoraShape, ModelShape, Workload

GB, GIB = 1e9, 2**30
LLAMA2_7B_PARAMS = 6_738_415_616  # meta-llama/Llama-2-7b-hf


@pytest.fixture(scope="module")
def llama7b():
    return plan.plan_model("llama-2-7b")


@pytest.fixture(scope="module")
def llama7b_json(tmp_path_factory):
    """A Llama-2-7B-shaped config.json (the fields of meta-llama/Llama-2-7b-hf's that decide its size)."""
    path = tmp_path_factory.mktemp("llama-2-7b") / "config.json"
    path.write_text(json.dumps({**plan.PRESETS["llama-2-7b"], "architectures": ["LlamaForCausalLM"],
                                "rms_norm_eps": 1e-05, "torch_dtype": "float16"}))
    return str(path)


# --- parameters --------------------------------------------------------------------------------------------

def test_llama2_7b_trainable_lora_params_all_linear_r16(llama7b):
    # per layer and unit of rank: q, k, v, o are 4096 x 4096 (4 * 8192); gate and up 4096 -> 11008
    # (2 * 15104), down 11008 -> 4096 (15104); 32 layers, r = 16
    per_rank = 32 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert per_rank == 2_498_560
    assert llama7b.lora.params == 16 * per_rank == 39_976_960
    assert llama7b.methods["lora"].trainable == llama7b.methods["qlora"].trainable == 39_976_960
    assert llama7b.shape.params == llama7b.methods["full"].trainable == LLAMA2_7B_PARAMS
    assert llama7b.lora.modules == 32 * 7


def test_presets_have_their_published_parameter_counts():
    published = {"llama-2-13b": 13_015_864_320, "llama-2-70b": 68_976_648_192, "mistral-7b": 7_241_732_096,
                 "qwen2-7b": 7_615_616_512, "phi-3-mini": 3_821_079_552, "llama-3-8b": 8_030_261_248}
    for name, n in published.items():
        assert plan.plan_model(name).shape.params == n, name


def test_phi3_fused_qkv_and_gate_up_are_adapted_as_one_module_each():
    p = plan.plan_model("phi-3-mini")  # qkv_proj 3072 -> 9216, o 3072 -> 3072, gate_up 3072 -> 16384, down 8192 -> 3072
    assert p.shape.gated
    assert p.lora.modules == 32 * 4
    assert p.lora.per_rank == 32 * ((3072 + 9216) + (3072 + 3072) + (3072 + 16384) + (8192 + 3072))
    assert p.lora.params == 25_165_824
    q = plan.plan_model("phi-3-mini", targets=("attn.q",))  # attn.q names the fused module: Q, K and V together
    assert q.lora.modules == 32 and q.lora.adapted_weights == 32 * 3072 * 9216


# --- memory ------------------------------------------------------------------------------------------------

def test_full_fine_tuning_states_are_16_bytes_per_parameter(llama7b):
    full = llama7b.methods["full"]
    assert (full.weights, full.gradients, full.optimizer) == (2 * LLAMA2_7B_PARAMS, 2 * LLAMA2_7B_PARAMS,
                                                               12 * LLAMA2_7B_PARAMS)
    assert full.states == 16 * LLAMA2_7B_PARAMS  # ZeRO's 2 + 2 + 12: 107.8 GB
    assert sum(plan.FULL_PRECISION["amp"]) == 18 and sum(plan.FULL_PRECISION["bf16"]) == 8


def test_lora_and_qlora_states_hand_computed(llama7b):
    n, lora = LLAMA2_7B_PARAMS, 39_976_960
    lo, q = llama7b.methods["lora"], llama7b.methods["qlora"]
    assert lo.weights == 2 * n + 4 * lora  # bf16 base, fp32 adapter
    assert lo.gradients == q.gradients == 4 * lora and lo.optimizer == q.optimizer == 8 * lora
    assert plan.NF4_BITS == pytest.approx(4.127, abs=1e-3)  # QLoRA paper: 4 + 0.127 bits with double quantization
    blocks = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # every linear inside the blocks goes to NF4
    assert llama7b.shape.block_linear_params == blocks == 6_476_005_376
    assert q.weights == pytest.approx(blocks * 4.127 / 8 + (n - blocks) * 2 + 4 * lora, rel=1e-4)
    assert q.weights / GB == pytest.approx(4.03, abs=0.01)
    # torch's allocator also holds two cuBLAS workspaces of 32 MiB (the forward's and the backward thread's handle,
    # Hopper's size; measured 64.3 MiB on an H200, bench/results/plan_vs_measured.md)
    assert lo.total == lo.states + lo.activations + 64 * 2**20
    assert lo.total_checkpointed == lo.states + lo.activations_checkpointed + 64 * 2**20
    assert lo.to_dict()["workspace"] == 64 * 2**20


TINY = ModelShape(model_type="llama", task="causal-lm", params=10_000, linear_params=9_000, block_linear_params=8_000,
                  head_params=0, layers=2, hidden=8, heads=2, head_dim=4, kv_heads=1, ffn=16, gated=True, vocab=10)


def test_activations_hand_computed():
    w = Workload(batch=2, seq_len=3)  # 6 tokens
    lora = LoraShape(r=2, targets=("x",), modules=4, adapted_weights=800, per_rank=200, input_features=100)
    # full, per block per token: 2 norms x 8h = 128, attention 2(2h_q + 2h_kv) = 2(16 + 8) = 48, gated FFN 8i = 128
    assert plan.block_bytes_per_token(TINY) == 304
    # LoRA: frozen norms 2 x 4h = 64, attention 48, FFN 6i = 96, adapters (2 * 100 + 2 * r * 4) / 2 blocks = 108
    assert plan.block_bytes_per_token(TINY, lora) == 316
    full_head, lora_head = 8 * 8 + 12 * 10, 4 * 8 + 12 * 10  # final norm + 12 bytes per logit, per token
    assert plan.activation_bytes(TINY, w) == (2 * 304 + full_head) * 6
    assert plan.activation_bytes(TINY, w, lora) == (2 * 316 + lora_head) * 6
    # checkpointing: each block's bf16 input (2h) + one block recomputed + the head
    assert plan.activation_bytes(TINY, w, checkpointed=True) == (2 * 2 * 8 + 304 + full_head) * 6
    # eager attention adds the scores: 6 bytes per head, query and key
    eager = Workload(batch=2, seq_len=3, attention="eager")
    assert plan.activation_bytes(TINY, eager) - plan.activation_bytes(TINY, w) == 2 * 6 * 2 * 3 * 6
    plain = ModelShape(**{**TINY.to_dict(), "gated": False})
    assert plan.block_bytes_per_token(plain) == 128 + 48 + 4 * 16


def _saved_bytes(model, w: Workload) -> int:
    """The bytes autograd saves for backward in one bf16-autocast training forward (saved-tensor hooks, the weights
    excluded), the way the HF Trainer runs it."""
    import torch

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, 100, (w.batch, w.seq_len))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(saved.values())


@pytest.mark.parametrize("targets,checkpointed", [(None, False), (None, True), (("all-linear",), False),
                                                  (("attn.q", "attn.v"), False), (("all-linear",), True)])
def test_the_activation_count_is_what_autograd_keeps(targets, checkpointed):
    """The formula against the bytes autograd really saves for backward (saved-tensor hooks, weights excluded)
    on a tiny bf16 Llama under bf16 autocast, the way the HF Trainer runs it; peft's default fp32 adapters."""
    import warnings

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    shape = plan.shape_of(model, "causal-lm")
    lora = plan.lora_shape(model, 4, targets) if targets else None
    if targets:
        from peft import LoraConfig, get_peft_model

        names = {"all-linear": "all-linear", "attn.q": "q_proj", "attn.v": "v_proj"}
        tm = "all-linear" if targets == ("all-linear",) else [names[t] for t in targets]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(model, LoraConfig(r=4, target_modules=tm, task_type="CAUSAL_LM"))
    if checkpointed:
        model.config.use_cache = False
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if targets:
            model.enable_input_require_grads()
    w = Workload(batch=2, seq_len=32)
    saved = _saved_bytes(model, w)
    # the formula counts the peak in the loss's backward: the logits at 12 bytes, of which autograd keeps
    # the fp32 log-softmax's 4; under checkpointing, also the one block recomputed in backward
    ours = plan.activation_bytes(shape, w, lora, checkpointed) - (plan.LOGIT_BYTES - 4) * shape.vocab * w.tokens
    if checkpointed:
        ours -= plan.block_bytes(shape, w, lora)
    assert ours == pytest.approx(saved, rel=0.08)


def test_lora_on_the_top_layers_keeps_no_activations_below_them():
    """Below the lowest adapted layer nothing requires grad: autograd keeps nothing there and the backward pass stops
    there (the plan counted every block: 4.7-6.4x the saved bytes for LoRA on the top layers)."""
    w = Workload(batch=2, seq_len=3)
    lora = LoraShape(r=2, targets=("x@1",), modules=4, adapted_weights=800, per_rank=200, input_features=100,
                     first_layer=1)
    assert plan.kept_layers(TINY, lora) == 1 and plan.kept_layers(TINY) == 2
    # LoRA block 64 + 48 + 96, its adapters all in the one block kept: (2 * 100 + 2 * r * 4) / 1 = 216
    assert plan.block_bytes_per_token(TINY, lora) == 424
    assert plan.activation_bytes(TINY, w, lora) == (424 + 4 * 8 + 12 * 10) * 6
    assert plan.activation_bytes(TINY, w, lora, checkpointed=True) == (2 * 8 + 424 + 4 * 8 + 12 * 10) * 6
    # FLOPs: 2N forward, input gradients through the head (1,000) and the kept block (4,000), the adapters' 6 * 400,
    # the attention's forward in both blocks (att) and its backward in the kept one
    att = 4 * 2 * 2 * 4 * 3
    assert plan.lora_flops(TINY, lora, w) == 2 * 9_000 + 2 * 5_000 + 6 * 400 + att + 2 * att / 2
    assert plan.lora_flops(TINY, lora, w, checkpointed=True) == \
        plan.lora_flops(TINY, lora, w) + 2 * 4_000 + 2 * 400 + att / 2


@pytest.mark.parametrize("targets", [("all-linear@3",), ("attn.q@top:1",), ("attn.v@2", "ffn@3")])
def test_the_activation_count_with_adapters_on_the_top_layers_is_what_autograd_keeps(targets):
    import warnings

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from loratune.adapt import resolve_targets
    from loratune.config import AdapterConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=100)
    cfg._attn_implementation = "sdpa"
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    shape, lora = plan.shape_of(model, "causal-lm"), plan.lora_shape(model, 4, targets)
    names = [s.name for s in resolve_targets(model, AdapterConfig(target_modules=targets))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(model, LoraConfig(r=4, target_modules=names, task_type="CAUSAL_LM"))
    w = Workload(batch=2, seq_len=32)
    saved = _saved_bytes(model, w)
    ours = plan.activation_bytes(shape, w, lora) - (plan.LOGIT_BYTES - 4) * shape.vocab * w.tokens
    assert ours == pytest.approx(saved, rel=0.1)


def test_activations_grow_linearly_in_batch_and_checkpointing_saves_most(llama7b):
    s = llama7b.shape
    one, four = (plan.activation_bytes(s, Workload(batch=b, seq_len=512)) for b in (1, 4))
    assert four == pytest.approx(4 * one)
    lo = llama7b.methods["lora"]
    assert lo.activations_checkpointed < lo.activations / 5


# --- FLOPs -------------------------------------------------------------------------------------------------

def test_flops_per_token_hand_computed():
    w, lora = Workload(batch=1, seq_len=5), LoraShape(r=2, targets=("x",), modules=4, adapted_weights=8_000,
                                                      per_rank=100)
    att = 4 * 2 * 2 * 4 * 5  # 4 * L * heads * head_dim * s, forward
    assert plan.full_flops(TINY, w) == 6 * 9_000 + 3 * att
    assert plan.lora_flops(TINY, lora, w) == 4 * 9_000 + 6 * 200 + 3 * att
    # checkpointing recomputes the blocks' forward (8,000 of the 9,000 linear weights), not the LM head's 1,000
    assert plan.full_flops(TINY, w, checkpointed=True) == 6 * 9_000 + 2 * 8_000 + 4 * att
    assert plan.lora_flops(TINY, lora, w, checkpointed=True) == 4 * 9_000 + 2 * 8_000 + 8 * 200 + 4 * att
    # LoRA's FLOPs reach full fine-tuning's when its parameters are a third of the linear weights
    third = LoraShape(r=30, targets=("x",), modules=4, adapted_weights=9_000, per_rank=100)
    assert plan.lora_flops(TINY, third, w) == plan.full_flops(TINY, w)


def test_the_breakeven_rank_is_params_one_formula(llama7b):
    lo = llama7b.lora
    assert llama7b.breakeven_rank == params.breakeven_rank(lo.adapted_weights, lo.per_rank) == 864
    assert llama7b.methods["lora"].flops_per_token / llama7b.methods["full"].flops_per_token == pytest.approx(
        (4 * 6_607_077_376 + 6 * 39_976_960 + 12 * 32 * 4096 * 512) / (6 * 6_607_077_376 + 12 * 32 * 4096 * 512))


# --- published Llama-2-7B figures (docs/planning.md, "Against published figures") ----------------------------
# (source, method, full-precision convention, r, targets, batch, seq_len, published bytes, which of our totals)
PUBLISHED = [
    # LLaMA-Factory README, "Hardware Requirement" (estimated VRAM, 7B column); compared at its own benchmark
    # setting (batch 1, cutoff_len 1024), its defaults (gradient checkpointing on, LoRA r 8 on all linear layers),
    # on the device (nvidia-smi: CUDA context included)
    ("llama-factory full (bf16 or fp16, AMP)", "full", "amp", 8, ("all-linear",), 1, 1024, 120 * GB,
     "on_device_checkpointed"),
    ("llama-factory full (pure_bf16)", "full", "bf16", 8, ("all-linear",), 1, 1024, 60 * GB, "on_device_checkpointed"),
    ("llama-factory LoRA 16-bit", "lora", "mixed", 8, ("all-linear",), 1, 1024, 16 * GB, "on_device_checkpointed"),
    ("llama-factory QLoRA 4-bit", "qlora", "mixed", 8, ("all-linear",), 1, 1024, 6 * GB, "on_device_checkpointed"),
    # torchtune "Finetuning Llama2 with QLoRA" tutorial, LoRA peak memory reserved in training (GiB, torch's
    # allocator): rank 8 on q and v, batch 2, Alpaca at max_seq_len 512, activation checkpointing
    ("torchtune LoRA (peak reserved)", "lora", "mixed", 8, ("attn.q", "attn.v"), 2, 512, 15.57 * GIB,
     "total_checkpointed"),
    # ZeRO (Rajbhandari et al. 2020): mixed-precision AdamW holds 16 bytes per parameter
    ("ZeRO 16 bytes/param", "full", "mixed", 8, ("all-linear",), 1, 512, 16 * LLAMA2_7B_PARAMS, "states"),
]


@pytest.mark.parametrize("source,method,precision,r,targets,batch,seq,published,key", PUBLISHED,
                         ids=[row[0] for row in PUBLISHED])
def test_llama2_7b_plan_within_15pct_of_published(llama7b_json, source, method, precision, r, targets, batch, seq,
                                                  published, key):
    p = plan.plan_model(llama7b_json, r=r, targets=targets, workload=Workload(batch, seq, "sdpa", precision))
    assert p.shape.params == LLAMA2_7B_PARAMS
    ours = p.methods[method].to_dict()[key]
    assert abs(ours / published - 1) <= 0.15, f"{source}: ours {ours / GB:.2f} GB vs {published / GB:.2f} GB"


def test_qlora_paper_65b_fits_one_48gb_gpu():
    # Dettmers et al. 2023: LLaMA-65B fine-tuned with QLoRA (r 64 on every linear layer) on one 48 GB GPU
    p = plan.plan_model("llama-65b", r=64, workload=Workload(batch=1, seq_len=512))
    assert p.methods["qlora"].to_dict()["on_device_checkpointed"] < 48 * GIB
    assert p.methods["lora"].to_dict()["on_device_checkpointed"] > 80 * GIB  # 16-bit LoRA would not fit one 80 GB card


# --- inputs --------------------------------------------------------------------------------------------------

def _fake_hub_cache(root, repo_id: str, config: dict) -> None:
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config))


def test_config_json_folder_and_cached_hub_id_give_the_preset(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    cfg = plan.PRESETS["llama-2-7b"]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    _fake_hub_cache(tmp_path / "cache", "someorg/llama-2-7b-shaped", cfg)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    for source in (str(tmp_path / "m" / "config.json"), str(tmp_path / "m"), "someorg/llama-2-7b-shaped"):
        assert plan.plan_model(source).shape.params == LLAMA2_7B_PARAMS, source


@pytest.mark.parametrize("command", ["plan", "params"])
def test_a_cached_hub_config_missing_size_fields_is_refused_as_the_file_is(command, tmp_path, monkeypatch, capsys):
    """A cached hub id skipped the missing-field check: hidden 64 and 4 heads alone were planned with LlamaConfig's
    32 layers, FFN 11008 and vocabulary 32000 (72.26M parameters), exit 0; the same file as a path was refused."""
    import huggingface_hub.constants as hub

    from loratune.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_attention_heads": 4}
    _fake_hub_cache(tmp_path / "cache", "acme/tiny", cfg)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    said = "does not set num_hidden_layers, vocab_size, intermediate_size: the plan would take transformers' defaults"
    snapshot = tmp_path / "cache" / "models--acme--tiny" / "snapshots" / ("0" * 40) / "config.json"
    for source in ("acme/tiny", str(snapshot)):
        assert main([command, source]) == 2, source
        err = " ".join(capsys.readouterr().err.split())
        assert said in err and "fix: set num_hidden_layers, vocab_size, intermediate_size in a config.json" in err


@pytest.mark.parametrize("command", ["plan", "params"])
def test_a_folder_with_two_gguf_files_names_them_and_a_fix_the_command_takes(command, tmp_path, capsys):
    """The fix was train's 'set model.gguf_file' (a key plan and params have no way to take), and the GGUF files found
    went unsaid."""
    from loratune.cli import main

    for name in ("b.gguf", "a.gguf"):
        (tmp_path / name).write_bytes(b"")
    assert main([command, str(tmp_path)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"folder '{tmp_path}' has no config.json and holds 2 GGUF files (a.gguf, b.gguf)" in err
    assert f"fix: give the .gguf file itself as MODEL, e.g. {tmp_path / 'a.gguf'}" in err
    assert "model.gguf_file" not in err and "model.name_or_path" not in err


@pytest.mark.parametrize("command", ["plan", "params"])
def test_an_unknown_model_type_is_named_with_the_fix(command, tmp_path, monkeypatch, capsys):
    """transformers' error was forwarded: its list of known types cut at 300 characters (ending ', )') and 'fix the
    field it names', which did not say the field is model_type. A cached hub config says the same."""
    import huggingface_hub.constants as hub
    import transformers

    from loratune.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _fake_hub_cache(tmp_path / "cache", "acme/unknown", {"model_type": "nonexistent_arch", "hidden_size": 64})
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "cache"))
    for source, model_type in ((_write({"model_type": "nonexistent_arch", "hidden_size": 64}), "nonexistent_arch"),
                               ("acme/unknown", "nonexistent_arch"), (_write({"model_type": "lama"}), "lama")):
        assert main([command, source]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"says model_type '{model_type}', which transformers {transformers.__version__} does not know" in err
        assert "fix: correct model_type in its config.json" in err and "upgrade transformers" in err
        assert "Should contain one of" not in err and "fix the field it names" not in err
        assert ("(close: llama" in err) == (model_type == "lama")


def test_an_encoder_is_planned_as_a_classifier(tmp_path):
    bert = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 64, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(bert))
    p = plan.plan_model(str(tmp_path / "config.json"), r=4)
    assert p.shape.task == "classification" and p.shape.vocab == 2 and not p.shape.gated
    assert p.shape.head_params > 0  # pooler and classifier train with the adapter
    assert p.methods["lora"].trainable == p.lora.params + p.shape.head_params


@pytest.mark.parametrize("kwargs,needle", [
    ({"r": 0}, "--r 0"),
    ({"workload": Workload(batch=0)}, "--batch 0"),
    ({"workload": Workload(seq_len=-1)}, "--seq-len -1"),
    ({"workload": Workload(full_precision="fp8")}, "--full-precision fp8"),
    ({"workload": Workload(gpu_memory_gib=0)}, "--gpu-memory 0"),
    ({"workload": Workload(gpu_memory_gib=float("inf"))}, "--gpu-memory inf"),  # (planned "GPUs of inf GiB")
    ({"workload": Workload(gpu_memory_gib=float("nan"))}, "--gpu-memory nan"),
    ({"targets": ("attn.nothing",)}, "attn.nothing"),
])
def test_bad_knobs_are_user_errors_with_a_fix(kwargs, needle):
    with pytest.raises(UserError) as err:
        plan.plan_model("llama-2-7b", **kwargs)
    assert needle in err.value.problem and err.value.fix


def test_bad_sources_are_user_errors_with_a_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    (tmp_path / "nomodeltype.json").write_text(json.dumps({"hidden_size": 8}))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "empty").mkdir()
    cases = {"llama-2-7": "offline", "someorg/not-cached": "HF_HUB_OFFLINE",
             str(tmp_path / "nomodeltype.json"): "model_type", str(tmp_path / "broken.json"): "JSON",
             str(tmp_path / "empty"): "no config.json", "missing.gguf": "does not exist",
             str(tmp_path / "missing" / "config.json"): "does not exist"}
    for source, needle in cases.items():
        with pytest.raises(UserError) as err:
            plan.plan_model(source)
        assert needle in err.value.problem and err.value.fix, source


def test_cli_exit_2_with_the_fix_and_json_in_bytes(capsys):
    from loratune.cli import main

    assert main(["plan", "llama-2-7b", "--r", "0"]) == 2
    assert "fix:" in capsys.readouterr().err
    assert main(["plan", "llama-2-7b", "--json", "--seq-len", "1024"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["methods"]["full"]["optimizer"] == 12 * LLAMA2_7B_PARAMS
    assert data["lora"]["params"] == 39_976_960 and data["breakeven_rank"] == 864
    assert data["workload"]["tokens"] == 1024
    assert main(["plan", "phi-3-mini"]) == 0
    assert "LoRA stops paying at r=768" in capsys.readouterr().out


def test_our_lora_count_is_peft_s(llama7b):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = dict(plan.PRESETS["llama-2-7b"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(raw.pop("model_type"), **raw))
        peft_model = get_peft_model(model, LoraConfig(r=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == llama7b.lora.params
    assert {p.dtype for p in trainable} == {torch.float32}  # ADAPTER_BYTES: peft keeps adapters in fp32


def test_params_takes_the_presets_and_shares_the_breakeven(capsys):
    from loratune.cli import main

    assert main(["params", "llama-2-7b", "--ranks", "16", "--targets", "all-linear", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["targets"][0]
    assert row["rows"][0]["lora"] == 39_976_960 and row["rank_at_third_adapted"] == 864


def test_gpus_needed_hand_computed():
    gib = 2**30
    shape = ModelShape(**{**TINY.to_dict(), "layers": 10, "block_linear_params": 10 * gib // 4})
    ctx, ws = plan.CUDA_CONTEXT_BYTES, plan.CUBLAS_WORKSPACE_BYTES
    assert plan.gpus_needed(10 * gib, 1 * gib, shape, 12 * gib) == 1  # 10 + 1 + 0.0625 + 0.5 fits 12
    # sharded: each GPU keeps its activations (1), the cuBLAS workspaces (0.0625), the context (0.5) and 2 gathered
    # bf16 blocks (2 x 2 x 0.25)
    room = 12 * gib - gib - ws - ctx - 2 * 2 * gib / 4
    assert plan.gpus_needed(100 * gib, 1 * gib, shape, 12 * gib) == math.ceil(100 * gib / room) == 11
    assert plan.gpus_needed(100 * gib, 12 * gib, shape, 12 * gib) is None  # the activations alone overflow


def test_gpus_for_70b_agree_with_published_setups():
    # Hugging Face's "Fine-tuning Llama 2 70B using PyTorch FSDP": full fine-tuning on 2 nodes x 8 A100 80GB
    full = plan.plan_model("llama-2-70b", workload=Workload(gpu_memory_gib=80)).methods["full"]
    assert 8 < full.gpus <= 16
    # LLaMA-Factory's changelog (24/03/20): FSDP + QLoRA fine-tunes a 70B model on 2 x 24 GB GPUs
    qlora = plan.plan_model("llama-2-70b", workload=Workload(gpu_memory_gib=24)).methods["qlora"]
    assert qlora.gpus == 2


@pytest.mark.parametrize("preset", ["llama-2-7b", "mistral-7b"])
def test_params_and_plan_count_the_same_model(preset, capsys):
    # params built every preset as a 2-way classifier (6.61B for Llama-2-7B), plan as the causal LM (6.74B)
    import json

    from loratune.cli import main

    assert main(["params", preset, "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert main(["plan", preset, "--json"]) == 0
    assert total == json.loads(capsys.readouterr().out)["shape"]["params"]


@pytest.mark.parametrize("config,said", [
    ({"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128, "num_local_experts": 4,
      "num_experts_per_tok": 2}, "mixture-of-experts model (4 experts)"),
    ({"model_type": "llama", "hidden_size": "4096"}, "is not a config transformers accepts"),
    ({"model_type": "llama", "hidden_size": 100, "num_attention_heads": 3}, "is not a config transformers accepts"),
    ({"model_type": "llama", "intermediate_size": -5, "hidden_size": 64, "num_attention_heads": 4,
      "num_hidden_layers": 1, "vocab_size": 32}, "intermediate_size must be an integer >= 1 (got -5)"),
])
def test_configs_plan_cannot_count_are_refused_by_name(config, said, tmp_path, capsys):
    """A MoE model printed a 16-bit-dense plan (LoRA 13.6M parameters for peft's 360M); bad sizes were tracebacks."""
    import json

    from loratune.cli import main

    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert main(["plan", str(path)]) == 2
    assert said in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("argv", [["plan", "{}", "--task", "classification"], ["params", "{}"]])
def test_a_config_that_cannot_be_built_is_not_blamed_on_the_task(argv, tmp_path, capsys):
    """BERT with hidden 33 over 2 heads raises ValueError while it is built: it was said as 'transformers has no
    classification model for bert' with the fix 'use --task causal-lm' (params then had no --task)."""
    from loratune.cli import main

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 33, "num_attention_heads": 2,
                                                      "num_hidden_layers": 2, "intermediate_size": 64,
                                                      "vocab_size": 100}))
    assert main([a.format(tmp_path) for a in argv]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'bert' cannot be built from this config (ValueError: The hidden size (33) is not a multiple" in err
    assert "fix the sizes in its config.json" in err and "has no" not in err and "--task" not in err


SMALL_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
               "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300}


@pytest.mark.parametrize("command", ["plan", "params"])
@pytest.mark.parametrize("change,said", [
    # a missing size field was planned with transformers' 7B-class default (hidden 4096, 32 heads, 32 layers)
    ({"hidden_size": None, "num_attention_heads": None},
     "does not set hidden_size, num_attention_heads: the plan would take transformers' defaults"),
    ({"num_hidden_layers": None}, "does not set num_hidden_layers"),
    ({"intermediate_size": None}, "does not set intermediate_size"),
    # invalid sizes were planned (or said as GPT-2's Conv1D blocks with a fix that cannot work)
    ({"num_key_value_heads": 3}, "num_key_value_heads (3) must divide num_attention_heads (4)"),
    ({"vocab_size": 0}, "vocab_size must be an integer >= 1 (got 0)"),
    ({"intermediate_size": 0}, "intermediate_size must be an integer >= 1 (got 0)"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be an integer >= 1 (got 0)"),
    ({"num_hidden_layers": -1}, "num_hidden_layers must be an integer >= 1 (got -1)"),
    # transformers' validation puts the reason on the line after its headline, which was all that was said
    ({"hidden_size": 33}, "The hidden size (33) is not a multiple of the number of attention heads (4)"),
    ({"hidden_size": "64"}, "expected int, got str"),
])
def test_a_config_json_with_missing_or_invalid_sizes_is_refused_by_field(command, change, said, tmp_path, capsys):
    from loratune.cli import main

    config = {k: v for k, v in {**SMALL_LLAMA, **change}.items() if v is not None}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main([command, str(tmp_path / "config.json")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert said in err and "fix:" in err and "Conv1D" not in err


def test_saved_configs_of_real_models_still_plan():
    """Only the size fields the plan reads are required: published configs (SmolLM2, MiniLM) set them all."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    got = plan.plan_model(str(root / "bench" / "data" / "smollm2_135m_config.json"))
    assert (got.shape.layers, got.shape.hidden, got.shape.heads, got.shape.kv_heads) == (30, 576, 9, 3)
    small = plan.plan_model(_write(SMALL_LLAMA))
    assert (small.shape.layers, small.shape.hidden, small.shape.ffn, small.shape.vocab) == (2, 64, 96, 300)


def _write(config: dict) -> str:
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


# the published config.json fields that decide the shape (tiiuae/falcon-7b, tiiuae/falcon-40b, google/flan-t5-base)
FALCON_7B = {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 4544,
             "num_attention_heads": 71, "num_hidden_layers": 32, "vocab_size": 65024, "multi_query": True,
             "new_decoder_architecture": False, "parallel_attn": True, "bias": False, "alibi": False}
FALCON_40B = {"architectures": ["FalconForCausalLM"], "model_type": "falcon", "hidden_size": 8192,
              "num_attention_heads": 128, "num_hidden_layers": 60, "vocab_size": 65024, "multi_query": True,
              "new_decoder_architecture": True, "num_kv_heads": 8, "parallel_attn": True, "bias": False,
              "bos_token_id": 11, "eos_token_id": 11}
FLAN_T5_BASE = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_ff": 2048, "d_kv": 64,
                "d_model": 768, "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu",
                "is_encoder_decoder": True, "is_gated_act": True, "num_decoder_layers": 12, "num_heads": 12,
                "num_layers": 12, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
                "vocab_size": 32128, "decoder_start_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}


@pytest.mark.parametrize("config,expected", [
    # (heads, KV heads, head dim, FFN, gated)
    (FALCON_7B, (71, 1, 64, 18176, False)),  # multi_query: one K, V head (query_key_value 4544 -> 4544 + 2 x 64)
    (FALCON_40B, (128, 8, 64, 32768, False)),  # new_decoder_architecture: num_kv_heads (8192 -> 8192 + 2 x 8 x 64)
    (FLAN_T5_BASE, (12, 12, 64, 2048, True)),  # d_ff, gated-gelu (wi_0 and wi_1)
    # t5-3b: 32 heads of d_kv 128 over d_model 1024 (not 1024 / 32), d_ff 16384, relu
    ({**FLAN_T5_BASE, "d_model": 1024, "d_kv": 128, "num_heads": 32, "d_ff": 16384, "num_layers": 2,
      "num_decoder_layers": 2, "feed_forward_proj": "relu", "is_gated_act": False}, (32, 32, 128, 16384, False)),
])
def test_the_shape_is_read_from_the_fields_falcon_and_t5_use(config, expected):
    """Falcon keeps its KV heads in multi_query / num_kv_heads, T5 its FFN in d_ff and head dim in d_kv: the plan read
    num_key_value_heads and intermediate_size, so Falcon-7B was 71 KV heads (+9.5% activations) and Flan-T5 a 3072-wide
    ungated FFN (-11.7%); each value is checked against the modules of the model built."""
    import torch.nn as nn

    from loratune.plan import build_meta_model, load_config

    got = plan.plan_model(_write(config), workload=Workload(seq_len=128)).shape
    assert (got.heads, got.kv_heads, got.head_dim, got.ffn, got.gated) == expected
    heads, kv, head_dim, ffn, gated = expected
    model = build_meta_model(load_config(_write(config)), got.task)
    out = {n.rsplit(".", 1)[-1]: m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    if config["model_type"] == "falcon":
        assert out["query_key_value"] == (heads + 2 * kv) * head_dim and out["dense_h_to_4h"] == ffn
    else:
        assert out["q"] == out["k"] == heads * head_dim and out["wo"] == config["d_model"]
        assert out["wi_0" if gated else "wi"] == ffn and ("wi_1" in out) == gated


def test_a_t5_config_without_d_ff_is_refused_as_a_missing_size():
    """T5's d_ff is its own field (no intermediate_size): a config without it was planned with t5-small's 2048."""
    with pytest.raises(UserError) as err:
        plan.plan_model(_write({k: v for k, v in FLAN_T5_BASE.items() if k != "d_ff"}))
    assert "does not set d_ff: the plan would take transformers' defaults" in err.value.problem


def test_resolve_targets_names_a_layer_count_below_one():
    """`train` reaches resolve_targets without plan's config check: 0 layers was said as GPT-2's Conv1D blocks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from loratune.adapt import resolve_targets
    from loratune.config import AdapterConfig

    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=0,
                                         num_attention_heads=2, vocab_size=50))
    with pytest.raises(UserError) as err:
        resolve_targets(model, AdapterConfig(target_modules=("all-linear",)))
    assert "num_hidden_layers must be >= 1" in err.value.problem and "Conv1D" not in err.value.problem


def test_a_seq_len_past_the_learned_positions_is_refused_as_train_refuses_it(capsys):
    """MiniLM's 512 learned positions: --seq-len 4096 was planned, though train refuses max_length 4096."""
    from loratune.cli import main
    from loratune.model_info import POSITION_OFFSET

    bert = {"model_type": "bert", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 128}
    assert main(["plan", _write(bert), "--seq-len", "129"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--seq-len 129 is longer than" in err and "cover 128 tokens" in err and "--seq-len 128 or less" in err
    assert main(["plan", _write(bert), "--seq-len", "128", "--json"]) == 0
    capsys.readouterr()
    roberta = {**bert, "model_type": "roberta", "pad_token_id": 1}  # the same rule train uses: RoBERTa's offset
    assert main(["plan", _write(roberta), "--seq-len", "127"]) == 2 and POSITION_OFFSET["roberta"] == 2
    assert "cover 126 tokens" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("model_type,fields,limit", [
    ("opt", {"max_position_embeddings": 2048}, 2048),  # learned positions: OPT, GPT-2, StarCoder, BioGPT
    ("gpt2", {"n_positions": 1024}, 1024),
    ("gpt_bigcode", {"n_positions": 8192}, 8192),
    ("biogpt", {"max_position_embeddings": 1024}, 1024),
    ("llama", {"max_position_embeddings": 4096}, None),  # rotary
    ("falcon", {"max_position_embeddings": 2048}, None),
    ("nemotron_h", {"max_position_embeddings": 4096}, None),  # no positional embedding at all
    ("jamba", {"max_position_embeddings": 4096}, None),
    ("xlnet", {}, None),  # relative positions: its config says -1
    ("xglm", {"max_position_embeddings": 2048}, None),  # a sinusoid table rebuilt for any longer input
    ("m2m_100", {"max_position_embeddings": 1024}, None),
    ("fsmt", {"max_position_embeddings": 1024}, None),
    ("musicgen_decoder", {"max_position_embeddings": 2048}, None),
    ("rwkv", {"context_length": 1024}, None),  # recurrent: max_position_embeddings is its context_length alias
    ("marian", {"max_position_embeddings": 512}, 512),  # a fixed sinusoid table: its size is the limit
])
def test_the_position_limit_is_one_rule_for_every_task(model_type, fields, limit):
    """position_limit decides by the config alone, and plan and train apply it to causal LMs too (both skipped it for
    every causal-lm run, so OPT planned and trained past its 2048 learned positions). XGLM (its sinusoid table rebuilt
    for any length) was refused past 2048 and RWKV (no positions) told of 'position embeddings'."""
    from transformers import AutoConfig

    from loratune.model_info import position_limit

    assert position_limit(AutoConfig.for_model(model_type, **fields)) == limit


def test_plan_takes_a_seq_len_past_a_growing_sinusoid_table(capsys):
    """XGLM-564M at --seq-len 4096 was refused ('its position embeddings cover 2048 tokens'), though its sinusoid
    table is rebuilt for any longer input and the forward runs."""
    from loratune.cli import main

    xglm = {"architectures": ["XGLMForCausalLM"], "model_type": "xglm", "d_model": 1024, "num_layers": 24,
            "attention_heads": 16, "ffn_dim": 4096, "vocab_size": 256008, "max_position_embeddings": 2048}
    assert main(["plan", _write(xglm), "--seq-len", "4096", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"]["task"] == "causal-lm"


def test_plan_refuses_a_seq_len_past_a_causal_lm_s_learned_positions(capsys):
    """OPT-1.3B at --seq-len 8192 was planned (exit 0); a forward past 2048 tokens raises IndexError."""
    from loratune.cli import main

    opt = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 2048, "ffn_dim": 8192,
           "num_hidden_layers": 24, "num_attention_heads": 32, "vocab_size": 50272, "max_position_embeddings": 2048,
           "word_embed_proj_dim": 2048, "do_layer_norm_before": True, "pad_token_id": 1}
    assert main(["plan", _write(opt), "--seq-len", "8192"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--seq-len 8192 is longer than" in err and "its position embeddings cover 2048 tokens" in err
    assert "give --seq-len 2048 or less" in err
    assert main(["plan", _write(opt), "--seq-len", "2048", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shape"]["task"] == "causal-lm"


@pytest.mark.parametrize("argv", [["--batch", "1" + "0" * 310], ["--seq-len", "99999999999999999999999"],
                                  ["--batch", str(2**20), "--seq-len", str(2**13)]])
def test_a_huge_workload_is_refused_with_its_range(argv, capsys):
    """--batch 1e310 was an OverflowError traceback; --seq-len 1e23 printed numbers."""
    from loratune.cli import main

    assert main(["plan", "llama-2-7b", *argv]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"at most {plan.MAX_TOKENS:,} tokens per micro-batch" in err and "fix:" in err
    assert plan.MAX_TOKENS == 2**32


@pytest.mark.parametrize("command", ["plan", "params"])
@pytest.mark.parametrize("targets,said", [("nothing", "--targets nothing: 'nothing' match no linear layer"),
                                          ("attn.q@5", "--targets attn.q@5: layer indices [5] are outside 0..1")])
def test_targets_that_match_nothing_are_said_as_the_option(command, targets, said, capsys):
    """plan said `adapter.target_modules: 'nothing' match...` (a config key the user never wrote) where params said
    `--targets nothing`: one helper (params.resolve_option_targets) for both."""
    from loratune.cli import main

    assert main([command, _write(SMALL_LLAMA), "--targets", targets]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert said in err and "fix: --targets:" in err and "adapter.target_modules" not in err


def test_a_method_that_fits_no_gpu_count_is_explained(capsys):
    from loratune.cli import main

    assert main(["plan", "llama-2-7b", "--gpu-memory", "0.0001"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "GPUs '-' (LoRA, QLoRA, full): fits on no number of 0.0001 GiB GPUs" in out and "--gpu-memory" in out
    assert main(["plan", "llama-2-7b"]) == 0
    assert "fits on no number" not in capsys.readouterr().out


MARIAN = {"model_type": "marian", "architectures": ["MarianMTModel"], "d_model": 32, "encoder_layers": 1,
          "decoder_layers": 1, "encoder_attention_heads": 2, "decoder_attention_heads": 2, "encoder_ffn_dim": 64,
          "decoder_ffn_dim": 64, "vocab_size": 100, "max_position_embeddings": 1024, "pad_token_id": 0,
          "decoder_start_token_id": 0}


XGLM = {"model_type": "xglm", "architectures": ["XGLMForCausalLM"], "d_model": 32, "num_layers": 1,
        "attention_heads": 2, "ffn_dim": 64, "vocab_size": 100, "max_position_embeddings": 2048}
BART = {**MARIAN, "model_type": "bart", "architectures": ["BartForConditionalGeneration"]}


@pytest.mark.parametrize("command", ["plan", "params"])
@pytest.mark.parametrize("config,task,other,said", [
    (XGLM, "classification", "causal-lm", "(it has a causal-lm one)"),
    (BART, "causal-lm", "classification", "(its causal-LM class is the decoder alone; it has a classification one)"),
])
def test_a_model_type_without_the_tasks_model_names_the_other_task_that_works(command, config, task, other, said,
                                                                              capsys):
    """XGLM has a causal-lm class and no classification one; BART a classifier, and a causal-LM class that is its
    decoder alone (BartForCausalLM): the fix `--task <other>` is taken by both commands (params had no --task) and
    plans the whole model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from loratune.cli import main

    assert main([command, _write(config), "--task", task]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"transformers has no {task} model for '{config['model_type']}' {said}" in err
    assert f"fix: use --task {other}" in err
    assert main([command, _write(config), "--task", other, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    built = plan.load_config(_write(config))
    built.num_labels = 2
    with torch.device("meta"):
        auto = AutoModelForCausalLM if other == "causal-lm" else AutoModelForSequenceClassification
        whole = auto.from_config(built)
    params = sum(p.numel() for p in whole.parameters())
    assert (out["shape"]["task"], out["shape"]["params"]) == (other, params) if command == "plan" \
        else out["total"] == params


@pytest.mark.parametrize("command", ["plan", "params"])
@pytest.mark.parametrize("config,kind", [
    ({"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
      "intermediate_size": 64}, "this model is neither"),
    ({**MARIAN, "model_type": "m2m_100", "architectures": ["M2M100ForConditionalGeneration"]},
     "this encoder-decoder (seq2seq) model is neither"),
    # a causal-LM class that is the decoder alone (MarianForCausalLM...): `--task causal-lm` planned the decoder
    (MARIAN, "(its causal-LM class is the decoder alone): plan and params cover"),
    ({**MARIAN, "model_type": "pegasus", "architectures": ["PegasusForConditionalGeneration"]},
     "(its causal-LM class is the decoder alone)"),
    ({**MARIAN, "model_type": "blenderbot", "architectures": ["BlenderbotForConditionalGeneration"]},
     "(its causal-LM class is the decoder alone)"),
    ({**MARIAN, "model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"], "num_mel_bins": 8,
      "max_source_positions": 16, "max_target_positions": 32}, "(its causal-LM class is the decoder alone)"),
])
@pytest.mark.parametrize("task", [[], ["--task", "causal-lm"], ["--task", "classification"]])
def test_a_model_type_with_neither_tasks_model_is_said_so_for_every_task(command, config, kind, task, capsys):
    """ViT and NLLB (m2m_100) have neither class: plan said 'use --task causal-lm', then 'use --task classification'
    (a loop), and params named --task, which it did not take. Marian, Pegasus, Blenderbot and Whisper have a causal-LM
    class that is their decoder alone: 'use --task causal-lm' planned the decoder (Marian: 2 of its 3 parts), not
    the translation model."""
    from loratune.cli import main

    assert main([command, _write(config), *task]) == 2
    err = " ".join(capsys.readouterr().err.split())
    mt = config["model_type"]
    assert f"transformers has neither a causal-lm nor a classification model for '{mt}'" in err and kind in err
    assert "this encoder-decoder (seq2seq) model is neither" in err or mt == "vit"
    assert "plan and params cover causal LMs" in err and "count its LoRA adapter with peft" in err
    assert "--task" not in err


def test_targets_keep_a_layer_list_with_its_group_and_ranks_stay_in_range(capsys):
    from loratune.cli import main

    assert plan.split_targets("attn.q@0,1, attn.v,ffn@top:2") == ("attn.q@0,1", "attn.v", "ffn@top:2")
    for argv in (["params", "llama-2-7b", "--ranks", "0,-4"], ["plan", "llama-2-7b", "--r", "100000"]):
        assert main(argv) == 2
    assert "adapter.r's range" in capsys.readouterr().err


def test_an_encoder_decoder_counts_both_stacks_and_its_shared_embeddings_once():
    """BART: the shared, encoder and decoder embed_tokens are one matrix (counted three times), and 3 + 3 blocks
    were planned as 3."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from loratune.adapt import num_blocks, num_layers

    cfg = AutoConfig.for_model("bart", d_model=32, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                               decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=128,
                               num_labels=2, max_position_embeddings=64)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(cfg)
    assert (num_blocks(model), num_layers(model)) == (6, 3)  # layers_to_transform indexes 0..2 in each stack
    report = params.params_report(model, (8,), (("all-linear",),)).to_dict()
    positions = 2 * (64 + 2) * 32  # BART's learned positions (offset 2), encoder and decoder
    assert report["embeddings"] == 128 * 32 + positions


def test_a_model_without_linear_blocks_is_refused_with_a_fix_that_works(capsys):
    """GPT-2's Conv1D projections: the fix offered raw module names, which match nothing either."""
    import json as _json
    import tempfile
    from pathlib import Path

    from loratune.cli import main

    path = Path(tempfile.mkdtemp()) / "config.json"
    path.write_text(_json.dumps({"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 64}))
    assert main(["plan", str(path), "--targets", "c_attn"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Conv1D" in err and "adapter.method=full" in err and "raw module names" not in err


def test_a_multimodal_config_is_planned_by_its_language_model(tmp_path):
    """Gemma 3's config keeps the language model under text_config: plan refused it as 'an architecture without
    attention heads', and params found no attn.q."""
    from transformers import Gemma3Config, Gemma3TextConfig

    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, vocab_size=1000)
    Gemma3Config(text_config=Gemma3TextConfig(**text)).save_pretrained(tmp_path / "mm")
    Gemma3TextConfig(**text).save_pretrained(tmp_path / "text")
    got = plan.plan_model(str(tmp_path / "mm"), r=8, targets=("attn.q", "attn.v"))
    want = plan.plan_model(str(tmp_path / "text"), r=8, targets=("attn.q", "attn.v"))
    assert got.shape.model_type == "gemma3_text" and got.shape == want.shape and got.lora == want.lora
    assert got.lora.modules == 4  # q and v of 2 layers: the llama-like groups


def test_plan_help_says_the_formulas_doc_is_in_the_repository(capsys):
    """`plan --help` named docs/planning.md, a file a pip install does not have: it says where the doc lives."""
    from loratune.cli import main

    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Formulas: docs/planning.md in the loratune repository" in out
