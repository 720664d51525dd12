"""The architecture table (adapt.GROUP_TABLE) checked against real module names: every row's architecture
is built from its `transformers` config class with tiny sizes on the meta device (no weights, no memory),
and every group of the row must resolve to linear layers of that model, one per block."""

from __future__ import annotations

import pytest
import torch

from loratune.adapt import ALIASES, GROUP_TABLE, GROUPS, _linear_sites, available_targets, resolve_targets
from loratune.config import AdapterConfig

LAYERS = 2
TINY = dict(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4, intermediate_size=64, vocab_size=128,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, num_labels=2, pad_token_id=0,
            bos_token_id=1, eos_token_id=2)
TINY_BY_TYPE = {  # config classes that name their sizes differently
    "distilbert": dict(dim=32, n_layers=LAYERS, n_heads=4, hidden_dim=64, vocab_size=128,
                       max_position_embeddings=64, num_labels=2, pad_token_id=0),
    "albert": dict(TINY, num_hidden_groups=LAYERS),  # a group per layer (released ALBERTs share one: test_adapt)
}


def build_meta(model_type: str):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(model_type, **TINY_BY_TYPE.get(model_type, TINY))
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(config)


@pytest.fixture(scope="module")
def models():
    return {}


def _model(models, model_type):
    if model_type not in models:
        models[model_type] = build_meta(model_type)
    return models[model_type]


@pytest.mark.parametrize("model_type", sorted(GROUP_TABLE))
def test_every_group_of_the_row_resolves_to_real_modules(models, model_type):
    model = _model(models, model_type)
    assert model.config.model_type == model_type
    row = GROUP_TABLE[model_type]
    sites, _ = _linear_sites(model)
    assert sites, f"the row's block pattern {row['blocks']!r} matches no linear layer"
    assert {s.layer for s in sites} == set(range(LAYERS))
    real = {s.relative for s in sites}
    for group in GROUPS:
        if group not in row:
            continue
        assert row[group] in real, f"{model_type} {group}: '{row[group]}' is not a module; it has {sorted(real)}"
        chosen = resolve_targets(model, AdapterConfig(target_modules=(group,)))
        assert [s.layer for s in chosen] == list(range(LAYERS)), group
        assert {s.relative for s in chosen} == {row[group]}


@pytest.mark.parametrize("model_type", sorted(GROUP_TABLE))
def test_the_row_covers_every_linear_layer_of_a_block(models, model_type):
    """`attn` + `ffn` adapt exactly what `all-linear` adapts: no linear layer of a block is outside the table."""
    model = _model(models, model_type)
    both = resolve_targets(model, AdapterConfig(target_modules=("attn", "ffn")))
    every = resolve_targets(model, AdapterConfig(target_modules=("all-linear",)))
    assert [s.name for s in both] == [s.name for s in every]
    groups = available_targets(model)["groups"]
    assert {g for g in GROUPS if g in GROUP_TABLE[model_type]} <= set(groups)
    assert set(ALIASES) <= set(groups)


def test_phi3_names_its_fused_projections():
    row = GROUP_TABLE["phi3"]
    assert row["attn.q"] == row["attn.k"] == row["attn.v"] == "self_attn.qkv_proj"
    assert row["ffn.gate"] == row["ffn.in"] == "mlp.gate_up_proj"


def test_an_architecture_outside_the_table_counts_its_blocks_not_their_sub_layers():
    """T5 nests numbered sub-layers inside numbered blocks (`encoder.block.3.layer.1.DenseReluDense.wi`): the block
    index is the first number, so five blocks read as five layers, each with its own feed-forward."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from loratune.adapt import num_layers

    config = AutoConfig.for_model("t5", d_model=32, d_ff=64, num_layers=5, num_decoder_layers=5, num_heads=4, d_kv=8,
                                  vocab_size=128, num_labels=2)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    assert "t5" not in GROUP_TABLE
    assert num_layers(model) == 5
    sites, _ = _linear_sites(model)
    wi = [s for s in sites if s.relative.endswith("DenseReluDense.wi")]
    assert sorted(s.layer for s in wi) == sorted(list(range(5)) * 2)  # the encoder's and the decoder's blocks
    assert all(s.relative == "layer.1.DenseReluDense.wi" or s.relative == "layer.2.DenseReluDense.wi" for s in wi)
