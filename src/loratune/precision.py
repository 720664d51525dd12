"""The numeric precision a run computes in, decided in one place from `train.precision` and what the
hardware does natively.

`resolve(setting, device_type, cpu_flags, cuda_bf16)` is pure: the hardware facts are its arguments,
so the rule is tested without the hardware. `detect(device_type)` reads those facts from this machine
(the CPU's flags from /proc/cpuinfo, `torch.cuda.is_bf16_supported()`) and resolves. The result goes
to run.json as `precision` (what ran and why).

bf16 means `torch.autocast(dtype=torch.bfloat16)` around the transformer body; weights, gradients and
the AdamW state stay float32, and the classification head and the loss run in float32
(`head_in_fp32`), so the logits, the softmax and the cross-entropy keep full precision.

Under autocast a LoRA layer's input reaches it in bf16 wherever the frozen layer before it was a matmul (an FFN's
down projection takes the bf16 GELU output), and peft casts it to the adapter's float32 weights before the dropout
and A (`_cast_input_dtype`), which autocast then casts back to bf16 for A's matmul: two full-size copies of the
input and a float32 dropout in between. `adapter_inputs_as_is` turns that cast off (peft's own switch,
`cast_input_dtype_enabled`; the `peft.helpers.disable_input_dtype_casting` context) for a run whose every forward is
autocast (bench/results/levers.md measures it). Without dropout (evaluation) the products are bit-identical
(bf16 -> float32 -> bf16 is exact); in training the LoRA dropout then runs on the bf16 input, as `nn.Dropout` on a
bf16 tensor does (kept elements scaled by 1/(1 - p) held in bf16: 1.109375 for p = 0.1, 0.16% under 1/0.9).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

SETTINGS = ("auto", "fp32", "bf16")

# CPU flags (Linux /proc/cpuinfo names) that give native bf16 matrix products: AVX512-BF16 (VDPBF16PS;
# Cooper Lake, Zen 4 and later) and AMX-BF16 (tile matmuls; Sapphire Rapids and later). Without one of
# them oneDNN emulates bf16 with conversions around fp32 arithmetic, which is slower than plain fp32
# (bench/results/throughput.md: measured on an AVX2-only EPYC).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    """What a run computes in. dtype: `bfloat16` (autocast over the body) or `float32`."""

    setting: str  # train.precision as configured: auto, fp32 or bf16
    dtype: str
    native: bool  # the hardware has bf16 arithmetic (on a float32 run: whether bf16 would have been native)
    reason: str

    @property
    def autocast(self) -> bool:
        return self.dtype == "bfloat16"

    def to_dict(self) -> dict:
        return asdict(self)


def resolve(setting: str, device_type: str, cpu_flags: Iterable[str] = (), cuda_bf16: bool = False) -> Precision:
    """The precision for `setting` on a device of `device_type` ('cpu', 'cuda', ...).

    auto: bf16 only where the hardware has it natively (a CUDA device with bf16 support, a CPU with
    avx512_bf16 or amx_bf16), float32 elsewhere. bf16: always bf16 (said when it is emulated). fp32:
    always float32."""
    if setting not in SETTINGS:
        raise ValueError(f"precision {setting!r}: allowed {', '.join(SETTINGS)}")
    flags = set(cpu_flags)
    if device_type == "cuda":
        native = bool(cuda_bf16)
        hw = "this CUDA device supports bf16" if native else "this CUDA device has no bf16 support"
    elif device_type == "cpu":
        have = [f for f in BF16_CPU_FLAGS if f in flags]
        native = bool(have)
        hw = (f"this CPU has {' and '.join(have)}" if have
              else f"this CPU has neither {' nor '.join(BF16_CPU_FLAGS)}")
    else:
        native, hw = False, f"no bf16 rule for device type '{device_type}'"
    if setting == "fp32":
        return Precision(setting, "float32", native, f"train.precision=fp32 ({hw})")
    if setting == "bf16":
        tail = "" if native else ": bf16 is emulated here and usually slower than fp32"
        return Precision(setting, "bfloat16", native, f"train.precision=bf16 ({hw}{tail})")
    if native:
        return Precision(setting, "bfloat16", True, f"auto: {hw}, so bf16 autocast (head and loss in float32)")
    return Precision(setting, "float32", False, f"auto: {hw}, so float32 (emulated bf16 would be slower)")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is missing (then auto means fp32)."""
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def detect(setting: str, device_type: str) -> Precision:
    """`resolve` with this machine's facts."""
    cuda_bf16 = False
    if device_type == "cuda":
        import torch

        cuda_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return resolve(setting, device_type, cpu_flags() if device_type == "cpu" else (), cuda_bf16)


def autocast(precision: Precision, device_type: str):
    """The context the body's forward runs in: bf16 autocast, or nothing."""
    if not precision.autocast:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def _variant_layer(module) -> bool:
    """A peft LoRA layer that runs a variant (DoRA, ...): it reads its base weight and its input itself, not only
    through autocast's matmuls, so neither lever below applies to it."""
    return hasattr(module, "lora_A") and bool(getattr(module, "lora_variant", None)
                                              or any(getattr(module, "use_dora", {}).values()))


def adapter_inputs_as_is(model) -> int:
    """Turn off peft's cast of a LoRA layer's input to the adapter weights' dtype, for a model whose every forward
    runs under autocast (A's matmul casts its input itself). Plain LoRA layers only (a DoRA or other variant keeps
    the cast). Returns how many layers changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", False) and hasattr(module, "lora_A") \
                and not _variant_layer(module):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


# What a peft wrapper puts before the transformers model's own module and parameter names.
PEFT_PREFIX = "base_model.model."


def under(name: str, paths: Iterable[str]) -> bool:
    """True when the module or parameter `name` (of a transformers model, or of a peft model wrapping one) is one of
    the modules at `paths` (paths inside the transformers model: 'classifier', 'bert.pooler', 'lm_head') or inside
    one. Anchored at the model's top: a block's own module that shares a head's name is not the head."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return any(name == p or name.startswith(p + ".") for p in paths)


# Name parts of the modules a peft adapter adds (lora_A, lora_B, lora_embedding_A, ..., and modules_to_save's
# trained copies): never held in bf16 by frozen_weights_in_bf16.
ADAPTER_PARTS = ("lora_", "modules_to_save")

# A LoRA layer's base weight held in bf16 -> the float32 tensor it was cast from. Evaluation merges W + scaling * B @ A
# (adapt.merged_for_eval) from the original: a delta below the weight's bf16 step would be lost if added to the bf16
# copy, and a saved adapter re-scored on its float32 base (`loratune evaluate`) must read what the run recorded.
# Keyed by the parameter's identity (torch.utils.weak.WeakIdKeyDictionary, made on first use: a tensor's == is
# elementwise); an entry goes with its parameter.
_FULL_WEIGHTS = None


def frozen_weights_in_bf16(model, head_names: Iterable[str], skip: Iterable = (), keep_full: bool = True) -> int:
    """Hold the frozen linear layers' weights and biases in bf16, for a model trained under bf16 autocast:
    autocast casts a float32 weight to bf16 at every matmul (it caches only the casts of leaves that require grad,
    so a frozen weight is cast again in every forward and backward), and a bf16 weight is what that cast gives, so
    the products are the same and the cast is paid once (bench/results/levers.md). Only for a model whose every
    forward through those layers runs under autocast. A LoRA layer's base weight keeps its float32 original beside
    it for evaluation's merge (`full_weight`), unless `keep_full` is False (a caller that never merges). Not the
    head's (the modules at the paths `head_names` and inside them, `under`; float32 by `head_in_fp32`), not an
    adapter's own (ADAPTER_PARTS), not a DoRA or other variant layer's base, not the modules in `skip` or inside them (a part some
    forward runs outside autocast), not a weight shared with another module (an output projection tied to the
    embeddings). A weight a checkpoint loaded in bf16 left in bf16 (`load_in_bf16`) is held as it is (its float32
    original: its exact upcast), or made float32 where it is not to be held. Returns how many layers hold their
    weights in bf16 (run.json precision.frozen_linear_bf16)."""
    import torch

    heads = tuple(head_names)
    # a DoRA (or other variant) layer reads its base weight itself (DoRA's column norms of W + scaling * B @ A), not
    # only through an autocast matmul: its base layer stays float32, as adapter_inputs_as_is leaves its input cast
    variants = [m.base_layer for m in model.modules() if _variant_layer(m) and hasattr(m, "base_layer")]
    skipped = {id(m) for s in (*skip, *variants) for m in s.modules()}
    uses: dict[int, int] = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
    changed = 0
    for name, mod in model.named_modules():
        parts = name.split(".")
        if not isinstance(mod, torch.nn.Linear):
            continue
        w, bias = mod.weight, mod.bias
        if id(mod) in skipped or under(name, heads) or any(part.startswith(ADAPTER_PARTS) for part in parts) \
                or w.requires_grad or uses[id(w)] > 1 or w.dtype not in (torch.float32, torch.bfloat16):
            # not held in bf16: float32, also where a checkpoint loaded in bf16 left it so (load_in_bf16), exact
            for p in (w, bias):
                if p is not None and p.dtype == torch.bfloat16:
                    p.data = p.data.float()
            continue
        if w.dtype == torch.float32:
            if parts[-1] == "base_layer" and keep_full:
                _full_weights()[w] = w.data
            w.data = w.data.to(torch.bfloat16)
        # else loaded in bf16 (load_in_bf16): the checkpoint's own values, its float32 original their exact upcast
        if bias is not None and uses[id(bias)] == 1:
            bias.data = bias.data.to(torch.bfloat16 if not bias.requires_grad else torch.float32)
        changed += 1
    return changed


def full_weight(weight):
    """The float32 tensor a weight held in bf16 by `frozen_weights_in_bf16` was cast from (on the weight's device: the
    cast runs before the model moves there, and the original stays on the host); for a weight loaded in bf16
    (load_in_bf16), its exact float32 upcast; else its own data."""
    full = None if _FULL_WEIGHTS is None else _FULL_WEIGHTS.get(weight)
    if full is not None:
        return full.to(weight.device)
    return weight.data.float() if weight.dtype == torch_bf16() else weight.data


def full_nbytes(weight) -> int:
    """The bytes `full_weight` gives for `weight`, without making it."""
    return weight.numel() * (4 if weight.dtype == torch_bf16() else weight.element_size())


def torch_bf16():
    import torch

    return torch.bfloat16


def load_in_bf16(precision: Precision, sharded: bool, adapter) -> bool:
    """Whether a base checkpoint saved in bf16 may be loaded with its weights in bf16 (models.weights_kwargs; the
    causal LM only: a classifier's fresh head would be drawn in bf16), sparing
    the float32 copy of every frozen weight that `frozen_weights_in_bf16` would cast back to bf16 (a 7B model: 14 GB
    instead of 28): a run that holds its frozen weights in bf16 (bf16 autocast, not sharded by FSDP, which shards by
    dtype) training a plain LoRA adapter, whose A and B are drawn apart from the base (not method full, whose every
    weight trains in float32; not DoRA, whose base layer stays float32; not pissa / olora, whose init rewrites the
    base weight). The rest of the model is made float32 at once (`upcast_unheld`), the adapter is made float32 (
    `adapters_in_float32`): the run computes what a float32 load of the checkpoint computes (bf16 -> float32 -> bf16
    is exact). A checkpoint saved in fp16 is loaded in float32 (fp16 -> bf16 rounds)."""
    from loratune.config import BASE_REWRITING_INITS

    return (precision.autocast and not sharded and adapter.method == "lora" and not adapter.use_dora
            and adapter.init_lora_weights not in BASE_REWRITING_INITS)


def upcast_unheld(model, head_names: Iterable[str]) -> None:
    """After a load in bf16 (load_in_bf16): every floating weight and buffer float32, except the linear layers'
    weights and biases that `frozen_weights_in_bf16` holds in bf16 (not the head's, not one tied to another module;
    the adapter's and what it trains are settled there). The embeddings, norms and the head: float32 as after a float32
    load, their values exact."""
    import torch

    heads = tuple(head_names)
    uses: dict[int, int] = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            uses[id(p)] = uses.get(id(p), 0) + 1
    for name, mod in model.named_modules():
        held = isinstance(mod, torch.nn.Linear) and not under(name, heads) and uses[id(mod.weight)] == 1
        for pname, t in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
            if t.dtype != torch.bfloat16 or (held and (pname == "weight" or (pname == "bias" and uses[id(t)] == 1))):
                continue
            t.data = t.data.float()


@contextlib.contextmanager
def adapters_in_float32(model):
    """Around peft's get_peft_model on a model loaded in bf16 (load_in_bf16): peft moves a new adapter to its base
    layer's dtype (bf16: A's float32 draw rounded) and autocast_adapter_dtype casts it back to float32 after, so the
    run would start from other A's than a float32 load's. peft reads a base layer's `compute_dtype` before its weight's
    dtype (its rule for bitsandbytes layers): float32 there for the call keeps the draw as drawn."""
    import torch

    marked = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.bfloat16
              and not hasattr(m, "compute_dtype")]
    for m in marked:
        m.compute_dtype = torch.float32
    try:
        yield
    finally:
        for m in marked:
            del m.compute_dtype


def _full_weights():
    global _FULL_WEIGHTS
    if _FULL_WEIGHTS is None:
        from torch.utils.weak import WeakIdKeyDictionary

        _FULL_WEIGHTS = WeakIdKeyDictionary()
    return _FULL_WEIGHTS


def record(precision: Precision, inputs_as_is: int, frozen_bf16: int = 0) -> dict:
    """run.json's `precision`: what ran and why, how many LoRA layers take their input as it comes
    (`adapter_inputs_as_is`; 0 on a float32 run, where peft's cast has nothing to do), and how many frozen linear
    layers hold their weights in bf16 (`frozen_weights_in_bf16`; 0 on a float32 run)."""
    return {**precision.to_dict(), "lora_inputs_as_is": inputs_as_is, "frozen_linear_bf16": frozen_bf16}


def head_in_fp32(model, head_names: Iterable[str], device_type: str) -> list[str]:
    """Make the head modules (the modules at the paths `head_names`, see `under`) run in
    float32 under autocast: their tensor inputs are cast to float32 and autocast is off inside them.
    Returns the module names changed. A no-op for float32 runs (nothing is autocast)."""
    import torch

    names = tuple(head_names)
    done: list[str] = []
    for name, mod in model.named_modules():
        if not name or not under(name, names):
            continue
        if any(name.startswith(d + ".") for d in done):
            continue  # inside a head already wrapped (peft's ModulesToSaveWrapper holds a copy)
        inner = mod.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            def up(x):
                return x.float() if torch.is_tensor(x) and x.is_floating_point() else x
            with torch.autocast(device_type=device_type, enabled=False):
                return _inner(*map(up, args), **{k: up(v) for k, v in kwargs.items()})

        mod.forward = forward
        done.append(name)
    return done
