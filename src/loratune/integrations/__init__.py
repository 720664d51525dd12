"""loratune inside other people's training loops.

`LoratuneCallback` (in `loratune.integrations.trainer`) plugs the diagnosis into a Hugging Face
`transformers.Trainer` or a TRL trainer:

    from loratune.integrations import LoratuneCallback
    trainer = Trainer(..., callbacks=[LoratuneCallback(overfit_patience=2)])

Imported lazily, so `import loratune.integrations` costs nothing until the callback is used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LoratuneCallback"]


def __getattr__(name: str) -> Any:
    if name == "LoratuneCallback":
        from loratune.integrations.trainer import LoratuneCallback

        return LoratuneCallback
    raise AttributeError(name)
