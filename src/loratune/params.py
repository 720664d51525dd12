"""LoRA parameter arithmetic for a model, built on the meta device (no weights needed).

For each target set and rank: LoRA parameters r * (d_in + d_out) summed over the adapted linear
layers, their share of the whole model and of the adapted weights, and the ranks where LoRA reaches
10% and 20% of the model and one third of the adapted weights (roughly where LoRA's training compute
stops being cheaper than full fine-tuning, protocol section 6).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from loratune.adapt import per_rank as lora_per_rank
from loratune.adapt import resolve_targets
from loratune.config import AdapterConfig
from loratune.errors import UserError

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
DEFAULT_TARGETS = (("attn.q", "attn.v"), ("attn.q", "attn.v", "ffn@top:2"), ("attn",), ("attn", "ffn"), ("all-linear",))


@dataclass(frozen=True)
class TargetParams:
    targets: tuple[str, ...]
    modules: int
    adapted_weights: int  # parameters of the adapted linear weights
    per_rank: int  # LoRA parameters per unit of rank: sum of d_in + d_out
    rows: tuple[dict, ...]  # per rank: r, lora, share_total, share_adapted
    rank_at_10pct: int
    rank_at_20pct: int
    rank_at_third_adapted: int  # compute breakeven


@dataclass(frozen=True)
class ParamsReport:
    model_type: str
    total: int  # whole model (with a 2-way head)
    embeddings: int
    num_layers: int  # physical blocks (what takes an adapter)
    targets: tuple[TargetParams, ...]
    depth: int = 0  # layers a forward runs: above num_layers when blocks are shared across depth (ALBERT)
    skipped: tuple[tuple[str, ...], ...] = ()  # default target sets this model has no layers for

    def to_dict(self) -> dict:
        return asdict(self)


def _rank_for(target: float, per_rank: int) -> int:
    return max(1, math.ceil(target / per_rank)) if per_rank else 0


# LoRA's share of the adapted weights from which its training stops being cheaper than full
# fine-tuning (protocol 6): the frozen weights still run forward and backward through the activations,
# so only the weight-gradient and optimizer work shrinks, and at about a third of the weights' parameters
# the adapter's own matmuls and optimizer state eat the saving.
BREAKEVEN_SHARE = 1 / 3


def breakeven_point(adapted_weights: float, per_rank: float) -> float:
    """The real-valued rank r where LoRA's r * per_rank parameters reach BREAKEVEN_SHARE of the adapted
    weights; per_rank is sum(d_in + d_out) over the adapted layers (2d for one d x d weight: r = d/6)."""
    return adapted_weights * BREAKEVEN_SHARE / per_rank


def breakeven_rank(adapted_weights: float | None, per_rank: float | None) -> int | None:
    """The compute-breakeven rank: the smallest integer rank at or past `breakeven_point` (at least 1);
    None when either count is unknown or zero."""
    if not adapted_weights or not per_rank or per_rank <= 0:
        return None
    return max(1, math.ceil(breakeven_point(adapted_weights, per_rank)))


def highest_rank_within_breakeven(adapted_weights: float | None, per_rank: float | None) -> int | None:
    """The largest integer rank at or below `breakeven_point` (at least 1): the highest rank a sweep may train
    without passing the compute breakeven (breakeven_rank, the first rank at or past it, may lie past it)."""
    if not adapted_weights or not per_rank or per_rank <= 0:
        return None
    return max(1, math.floor(breakeven_point(adapted_weights, per_rank) * (1 + 1e-9)))


def resolve_option_targets(model, targets, option: str = "--targets") -> list:
    """resolve_targets for a target list given on the command line: a name that matches no layer is said as the
    option the user gave (`--targets nothing: ...`), not as adapter.target_modules of a config they never wrote."""
    try:
        return resolve_targets(model, AdapterConfig(target_modules=tuple(targets)))
    except UserError as exc:
        if exc.problem.startswith("adapter.target_modules"):  # a name the user gave: say where they gave it
            raise UserError(f"{option} {','.join(targets)}: {exc.problem.partition(': ')[2]}",
                            f"{option}: {exc.fix}") from None
        raise


def params_report(model, ranks=DEFAULT_RANKS, target_sets=DEFAULT_TARGETS, skip_unresolved: bool = False,
                  option: str = "--targets") -> ParamsReport:
    """The arithmetic per target set. `skip_unresolved` (the default sets, no --targets given): a set this model
    has no layers for (groups of the table on an architecture outside it) is skipped and named in `skipped`,
    all-linear never. Otherwise a set that matches no layer is a UserError naming `option`."""
    import torch.nn as nn

    from loratune.adapt import depth, num_layers

    total = sum(p.numel() for p in model.parameters())
    # each embedding matrix once: an encoder-decoder shares one (BART's shared, encoder and decoder embed_tokens)
    emb = sum(w.numel() for w in {id(m.weight): m.weight for m in model.modules()
                                  if isinstance(m, nn.Embedding)}.values())
    rows, skipped = [], []
    for targets in target_sets:
        try:
            sites = resolve_option_targets(model, targets, option)
        except UserError:
            if skip_unresolved and tuple(targets) != ("all-linear",):
                skipped.append(tuple(targets))
                continue
            raise
        adapted = sum(s.in_features * s.out_features for s in sites)
        per_rank = lora_per_rank(sites)
        per = tuple({"r": r, "lora": r * per_rank, "share_total": r * per_rank / total,
                     "share_adapted": r * per_rank / adapted} for r in ranks)
        rows.append(TargetParams(tuple(targets), len(sites), adapted, per_rank, per,
                                 _rank_for(0.10 * total, per_rank), _rank_for(0.20 * total, per_rank),
                                 breakeven_rank(adapted, per_rank) or 0))
    return ParamsReport(model.config.model_type, total, emb, num_layers(model), tuple(rows), depth(model),
                        tuple(skipped))
