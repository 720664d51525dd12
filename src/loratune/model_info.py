"""Model facts from the model's config alone (no weights): type, layers, hidden size, positions."""

from __future__ import annotations

from dataclasses import dataclass

from loratune.config import ModelConfig


@dataclass(frozen=True)
class ModelInfo:
    model_type: str | None
    num_layers: int | None
    hidden_size: int | None
    max_positions: int | None


def describe_model(cfg: ModelConfig) -> ModelInfo | None:
    """Layers, hidden size and positions from the model's config (no weights loaded); None if unreadable."""
    from loratune.errors import UserError
    from loratune.models import load_model_config

    try:
        c = load_model_config(cfg)
    except UserError:  # the tokenizer / model load reports the real problem
        return None

    def first(*names):
        for n in names:
            v = getattr(c, n, None)
            if isinstance(v, int):
                return v
        return None

    return ModelInfo(getattr(c, "model_type", None), first("num_hidden_layers", "n_layer", "num_layers"),
                     first("hidden_size", "n_embd", "d_model"),
                     first("max_position_embeddings", "n_positions", "max_seq_len"))
