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


def adapter_inputs_as_is(model) -> int:
    """Turn off peft's cast of a LoRA layer's input to the adapter weights' dtype, for a model whose every forward
    runs under autocast (A's matmul casts its input itself). Plain LoRA layers only (a DoRA or other variant keeps
    the cast). Returns how many layers changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", False) and hasattr(module, "lora_A") \
                and not getattr(module, "lora_variant", None):
            module.cast_input_dtype_enabled = False
            changed += 1
    return changed


def record(precision: Precision, inputs_as_is: int) -> dict:
    """run.json's `precision`: what ran and why, and how many LoRA layers take their input as it comes
    (`adapter_inputs_as_is`; 0 on a float32 run, where peft's cast has nothing to do)."""
    return {**precision.to_dict(), "lora_inputs_as_is": inputs_as_is}


def head_in_fp32(model, head_names: Iterable[str], device_type: str) -> list[str]:
    """Make the head modules (the outermost modules whose last name part is in `head_names`) run in
    float32 under autocast: their tensor inputs are cast to float32 and autocast is off inside them.
    Returns the module names changed. A no-op for float32 runs (nothing is autocast)."""
    import torch

    names = set(head_names)
    done: list[str] = []
    for name, mod in model.named_modules():
        if not name or name.rsplit(".", 1)[-1] not in names:
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
