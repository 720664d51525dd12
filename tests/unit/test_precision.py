"""train.precision resolution (precision.resolve): the hardware facts are inputs, so no case depends on
the machine the tests run on."""

from __future__ import annotations

import pytest

from loratune import precision
from loratune.config import load_config
from loratune.errors import ConfigError

AVX2_ONLY = ("fpu", "sse2", "avx", "avx2", "fma")
ZEN4 = AVX2_ONLY + ("avx512f", "avx512_bf16")
SAPPHIRE_RAPIDS = AVX2_ONLY + ("avx512f", "amx_tile", "amx_bf16")

CASES = [
    # setting, device, cpu flags, cuda bf16 -> dtype, native
    ("auto", "cpu", AVX2_ONLY, False, "float32", False),
    ("auto", "cpu", ZEN4, False, "bfloat16", True),
    ("auto", "cpu", SAPPHIRE_RAPIDS, False, "bfloat16", True),
    ("auto", "cpu", (), False, "float32", False),  # no /proc/cpuinfo: nothing known, float32
    ("auto", "cuda", (), True, "bfloat16", True),
    ("auto", "cuda", (), False, "float32", False),
    ("auto", "cuda", ZEN4, False, "float32", False),  # the CPU's flags say nothing about the GPU
    ("auto", "mps", ZEN4, False, "float32", False),
    ("fp32", "cpu", ZEN4, False, "float32", True),
    ("fp32", "cuda", (), True, "float32", True),
    ("bf16", "cpu", AVX2_ONLY, False, "bfloat16", False),  # honoured, said to be emulated
    ("bf16", "cpu", ZEN4, False, "bfloat16", True),
    ("bf16", "cuda", (), True, "bfloat16", True),
]


@pytest.mark.parametrize("setting,device,flags,cuda_bf16,dtype,native", CASES)
def test_resolution_table(setting, device, flags, cuda_bf16, dtype, native):
    p = precision.resolve(setting, device, flags, cuda_bf16)
    assert (p.dtype, p.native, p.setting) == (dtype, native, setting)
    assert p.autocast == (dtype == "bfloat16")
    assert p.reason  # run.json says why


def test_reasons_name_the_deciding_fact():
    assert "avx512_bf16" in precision.resolve("auto", "cpu", AVX2_ONLY).reason
    assert "emulated" in precision.resolve("bf16", "cpu", AVX2_ONLY).reason
    assert "emulated" not in precision.resolve("bf16", "cpu", ZEN4).reason
    assert "amx_bf16" in precision.resolve("auto", "cpu", SAPPHIRE_RAPIDS).reason
    assert precision.resolve("fp32", "cpu", ZEN4).reason.startswith("train.precision=fp32")


def test_to_dict_is_what_run_json_records():
    d = precision.resolve("auto", "cpu", ZEN4).to_dict()
    assert set(d) == {"setting", "dtype", "native", "reason"}


def test_unknown_setting_refused():
    with pytest.raises(ValueError):
        precision.resolve("fp16", "cpu")


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx avx2 avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx avx2 avx512_bf16\n")
    assert precision.cpu_flags(info) == {"fpu", "avx", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize("value", ["auto", "fp32", "bf16"])
def test_config_key(value):
    assert load_config(None, [f"precision={value}"]).train.precision == value


def test_config_refuses_other_values():
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["precision=fp16"])


def _lora_mlp(use_dora: bool = False):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    return get_peft_model(body, LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], use_dora=use_dora))


def test_adapter_inputs_as_is_keeps_a_bf16_input_bf16_for_the_same_numbers():
    """Under autocast the GELU output reaches the second LoRA layer in bf16; peft casts it to float32 for the
    dropout and A, and autocast casts it back for A's matmul. Without that round trip the adapter sees the bf16
    input itself, and with no dropout (lora_dropout 0) the output and the gradients are bit-identical (bf16 -> fp32
    -> bf16 is exact)."""
    import torch

    x = torch.randn(5, 8)
    seen = {}

    def run(model):
        model.zero_grad()
        hook = model.base_model.model[2].lora_dropout["default"].register_forward_hook(
            lambda m, args, out: seen.__setitem__("dtype", args[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().square().sum().backward()
        hook.remove()
        return out.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad], seen["dtype"]

    plain, as_is = _lora_mlp(), _lora_mlp()
    with torch.no_grad():  # a non-zero B, so A gets a gradient too
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.normal_()
    as_is.load_state_dict(plain.state_dict())
    assert precision.adapter_inputs_as_is(as_is) == 2
    out0, grads0, dtype0 = run(plain)
    out1, grads1, dtype1 = run(as_is)
    assert (dtype0, dtype1) == (torch.float32, torch.bfloat16)
    assert torch.equal(out0, out1) and all(torch.equal(a, b) for a, b in zip(grads0, grads1))


def test_adapter_inputs_as_is_leaves_dora_and_non_lora_modules_alone():
    dora = _lora_mlp(use_dora=True)
    assert precision.adapter_inputs_as_is(dora) == 0
    assert all(m.cast_input_dtype_enabled for m in dora.modules() if hasattr(m, "cast_input_dtype_enabled"))
    rec = precision.record(precision.resolve("auto", "cpu", ZEN4), 2)
    assert rec["lora_inputs_as_is"] == 2 and rec["dtype"] == "bfloat16"



def _lora_net():
    """Two LoRA layers around a GELU, a frozen linear layer without an adapter, a head, and an output projection
    tied to an embedding: each kind frozen_weights_in_bf16 must treat its own way."""
    import torch
    from peft import LoraConfig, get_peft_model

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(16, 8)
            self.up, self.act, self.down = torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)
            self.mix = torch.nn.Linear(8, 8)
            self.tied = torch.nn.Linear(8, 16, bias=False)
            self.tied.weight = self.embed.weight
            self.classifier = torch.nn.Linear(8, 3)

        def forward(self, ids):
            h = self.mix(self.down(self.act(self.up(self.embed(ids)))))
            return self.classifier(h.float()).float(), self.tied(h)

    torch.manual_seed(0)
    net = get_peft_model(Net(), LoraConfig(r=4, lora_alpha=8, target_modules=["up", "down"],
                                           modules_to_save=["classifier"]))
    with torch.no_grad():  # a non-zero B, small: its delta sits far below the base weights' bf16 step
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)
    return net


def test_frozen_weights_in_bf16_give_the_same_products_under_autocast():
    """Under autocast a frozen float32 weight is cast to bf16 at each matmul; held in bf16 it gives the same outputs
    and the same gradients, bit for bit. The head, the adapter's own weights and a tied output projection stay
    float32; a LoRA layer's float32 original stays reachable for evaluation's merge."""
    import torch

    ids = torch.randint(0, 16, (4, 6))

    def run(model):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, tied = model(ids)
        (logits.square().sum() + tied.float().square().sum()).backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    plain, held = _lora_net(), _lora_net()
    held.load_state_dict(plain.state_dict())
    originals = {n: p.detach().clone() for n, p in held.named_parameters()}
    assert precision.frozen_weights_in_bf16(held, ("classifier",)) == 3  # up and down's base layers, mix
    dtypes = {n: p.dtype for n, p in held.named_parameters()}
    bf16 = sorted(n for n, d in dtypes.items() if d == torch.bfloat16)
    assert bf16 == sorted(f"base_model.model.{m}.{k}" for m in ("up.base_layer", "down.base_layer", "mix")
                          for k in ("weight", "bias"))
    base = held.base_model.model
    full = precision.full_weight(base.up.base_layer.weight)
    assert full.dtype == torch.float32 and torch.equal(full, originals["base_model.model.up.base_layer.weight"])
    mix = precision.full_weight(base.mix.weight)  # no adapter to merge: no original kept, its exact upcast
    assert mix.dtype == torch.float32 and torch.equal(mix, base.mix.weight.float())
    out0, grads0 = run(plain)
    out1, grads1 = run(held)
    assert torch.equal(out0, out1) and all(torch.equal(a, b) for a, b in zip(grads0, grads1))
    before = {n: (p.data_ptr(), p.dtype) for n, p in held.named_parameters()}
    assert precision.frozen_weights_in_bf16(held, ("classifier",)) == 3  # already held in bf16: counted, unchanged
    assert {n: (p.data_ptr(), p.dtype) for n, p in held.named_parameters()} == before
    # a DoRA layer reads its base weight itself (column norms): its base stays float32, as its input cast does
    dora = _lora_mlp(use_dora=True)
    assert precision.frozen_weights_in_bf16(dora, ("classifier",)) == 0
    assert all(p.dtype == torch.float32 for p in dora.parameters())


def test_merged_evaluation_of_bf16_held_weights_is_the_float32_models():
    """Evaluation merges W + scaling * B @ A from the float32 original: the merged logits of a model whose frozen
    weights are held in bf16 are those of its float32 twin (what `loratune evaluate` re-scores), where merging into
    the bf16 copy would round most of this small delta away."""
    import torch

    from loratune.adapt import merged_for_eval

    ids = torch.randint(0, 16, (4, 6))

    def merged(model):
        model.eval()
        with merged_for_eval(model), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(ids)[0]

    plain, held = _lora_net(), _lora_net()
    held.load_state_dict(plain.state_dict())
    precision.frozen_weights_in_bf16(held, ("classifier",))
    up = held.base_model.model.up
    bf16_sum = up.base_layer.weight.data + up.get_delta_weight("default").to(torch.bfloat16)
    full_sum = (precision.full_weight(up.base_layer.weight) + up.get_delta_weight("default")).to(torch.bfloat16)
    assert not torch.equal(bf16_sum, full_sum)  # the case this guards: the bf16 sum loses part of the delta
    assert torch.equal(merged(plain), merged(held))
    assert up.base_layer.weight.dtype == torch.bfloat16  # swapped back after the block
