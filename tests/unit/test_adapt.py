"""Semantic target groups resolve per architecture; parameter arithmetic (models on the meta device)."""

from __future__ import annotations

import json

import pytest
import torch

from loratune.adapt import available_targets, lora_params, resolve_targets
from loratune.config import AdapterConfig
from loratune.errors import UserError
from loratune.models import load_meta_model
from loratune.params import params_report


def _meta(model_type: str, **kw):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    cfg = AutoConfig.for_model(model_type, **kw)
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(cfg)


@pytest.fixture(scope="module")
def bert():
    return _meta("bert", hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                 vocab_size=100)


@pytest.fixture(scope="module")
def llama():
    return _meta("llama", hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=48, vocab_size=100)


def names(sites):
    return [s.name for s in sites]


def test_bert_groups(bert):
    q = resolve_targets(bert, AdapterConfig(target_modules=("attn.q",)))
    assert names(q) == [f"bert.encoder.layer.{i}.attention.self.query" for i in range(4)]
    ffn_out = resolve_targets(bert, AdapterConfig(target_modules=("ffn.out",)))
    # ffn.out is the block's output.dense, never attention.output.dense
    assert names(ffn_out) == [f"bert.encoder.layer.{i}.output.dense" for i in range(4)]
    attn = resolve_targets(bert, AdapterConfig(target_modules=("attn",)))
    assert len(attn) == 4 * 4
    ffn = resolve_targets(bert, AdapterConfig(target_modules=("ffn",)))
    assert {s.relative for s in ffn} == {"intermediate.dense", "output.dense"}  # BERT has no gate
    assert len(resolve_targets(bert, AdapterConfig(target_modules=("all-linear",)))) == 6 * 4


def test_llama_groups(llama):
    table = {"attn.q": "self_attn.q_proj", "attn.k": "self_attn.k_proj", "attn.v": "self_attn.v_proj",
             "attn.o": "self_attn.o_proj", "ffn.gate": "mlp.gate_proj", "ffn.in": "mlp.up_proj",
             "ffn.out": "mlp.down_proj"}
    for group, rel in table.items():
        sites = resolve_targets(llama, AdapterConfig(target_modules=(group,)))
        assert {s.relative for s in sites} == {rel} and len(sites) == 3
    v = resolve_targets(llama, AdapterConfig(target_modules=("attn.v",)))[0]
    assert (v.in_features, v.out_features) == (32, 16)  # 2 kv heads x head_dim 8
    assert len(resolve_targets(llama, AdapterConfig(target_modules=("ffn",)))) == 9


def test_layer_selection(bert):
    top2 = resolve_targets(bert, AdapterConfig(target_modules=("attn.q", "attn.v"), layers_to_transform="top:2"))
    assert sorted({s.layer for s in top2}) == [2, 3]
    explicit = resolve_targets(bert, AdapterConfig(target_modules=("attn.q",), layers_to_transform=(0, 2)))
    assert [s.layer for s in explicit] == [0, 2]
    mixed = resolve_targets(bert, AdapterConfig(target_modules=("attn.q", "ffn@top:1")))
    assert sorted(s.layer for s in mixed if s.relative == "attention.self.query") == [0, 1, 2, 3]
    assert sorted(s.layer for s in mixed if s.relative in ("intermediate.dense", "output.dense")) == [3, 3]


def test_raw_names(bert, llama):
    assert len(resolve_targets(bert, AdapterConfig(target_modules=("query", "value")))) == 8
    assert len(resolve_targets(llama, AdapterConfig(target_modules=("q_proj",)))) == 3
    full = "bert.encoder.layer.1.attention.self.key"
    assert names(resolve_targets(bert, AdapterConfig(target_modules=(full,)))) == [full]


def test_unknown_target_lists_what_exists(bert, llama):
    with pytest.raises(UserError) as e:
        resolve_targets(bert, AdapterConfig(target_modules=("attn.q", "mlp.weird")))
    assert "'mlp.weird'" in e.value.problem and "attn.q" in e.value.fix and "intermediate.dense" in e.value.fix
    with pytest.raises(UserError) as e:  # BERT has no gate projection
        resolve_targets(bert, AdapterConfig(target_modules=("ffn.gate",)))
    assert "'ffn.gate'" in e.value.problem
    assert "ffn.gate" in available_targets(llama)["groups"] and "ffn.gate" not in available_targets(bert)["groups"]


def test_layer_out_of_range(bert):
    with pytest.raises(UserError, match="more layers than the model has"):
        resolve_targets(bert, AdapterConfig(target_modules=("attn.q",), layers_to_transform="top:9"))
    with pytest.raises(UserError, match="outside 0..3"):
        resolve_targets(bert, AdapterConfig(target_modules=("attn.q@5",)))


def test_lora_params_formula(llama):
    sites = resolve_targets(llama, AdapterConfig(target_modules=("attn.q", "attn.v")))
    assert lora_params(sites, 4) == 3 * 4 * ((32 + 32) + (32 + 16))


def test_params_report_from_bare_config_json(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = load_meta_model(str(tmp_path / "config.json"))
    rep = params_report(model, ranks=(8, 64), target_sets=(("attn.q", "attn.v"), ("all-linear",)))
    qv = rep.targets[0]
    assert qv.modules == 4 and qv.per_rank == 2 * 2 * 128 and qv.adapted_weights == 4 * 64 * 64
    assert qv.rows[0]["lora"] == 8 * 512
    assert qv.rows[1]["share_adapted"] == pytest.approx(64 * 512 / (4 * 64 * 64))
    assert qv.rank_at_third_adapted == 11  # ceil((4 * 64 * 64 / 3) / 512) = ceil(10.67)
    assert rep.embeddings == 1000 * 64
    lin = rep.targets[1]
    assert lin.modules == 2 * 7
    assert lin.rank_at_10pct <= lin.rank_at_20pct


def _tiny_classifier(model_type: str, **kw):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(model_type, vocab_size=100, **kw))


def test_the_head_is_what_the_classifier_adds_to_its_base_one_definition_for_peft_and_counts():
    """heads.head_modules: every module the classifier class adds on top of its base model (plus the base's pooler);
    peft trains and saves exactly those (modules_to_save) and count_params calls exactly those the head."""
    from loratune.adapt import apply_adapter, count_params
    from loratune.heads import head_modules

    distil = _tiny_classifier("distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64, num_labels=4)
    assert head_modules(distil) == ["classifier", "pre_classifier"]
    bert = _tiny_classifier("bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    assert head_modules(bert) == ["bert.pooler", "classifier"]
    modern = _tiny_classifier("modernbert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, pad_token_id=0, cls_token_id=2, sep_token_id=3, bos_token_id=2,
                              eos_token_id=3, global_attn_every_n_layers=1, local_attention=16)
    assert head_modules(modern) == ["classifier", "head"]

    model, sites = apply_adapter(distil, AdapterConfig(target_modules=("attn.q", "attn.v"), r=4))
    counts = count_params(model, sites, "lora")
    # LoRA r=4 on q and v of 2 layers: 4 x (32 + 32) x 4 = 1,024; head: pre_classifier 32x32+32, classifier 32x4+4
    assert counts.adapter == 1024
    assert counts.head == 32 * 32 + 32 + 32 * 4 + 4
    assert counts.trainable == counts.adapter + counts.head
    trained_outside_lora = {n.split(".modules_to_save.")[0].removeprefix("base_model.model.")
                            for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trained_outside_lora == set(head_modules(model))


def test_a_pooler_the_classifier_never_calls_is_no_part_of_the_head():
    """BigBird's classifier takes token 0 of the last hidden state and never calls the pooler its base model builds:
    the pooler was in modules_to_save (1,056 of 3,235 trainable parameters here), got no gradient, and was saved
    unchanged. Every parameter the head holds now gets a gradient from one backward pass."""
    import torch

    from loratune.adapt import apply_adapter, count_params
    from loratune.heads import head_modules

    bird = _tiny_classifier("big_bird", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, attention_type="original_full", num_labels=3)
    assert head_modules(bird) == ["classifier"]
    model, sites = apply_adapter(bird, AdapterConfig(target_modules=("query", "value"), r=4))
    counts = count_params(model, sites, "lora")
    assert counts.head == 32 * 32 + 32 + 32 * 3 + 3  # the classifier's dense and out_proj, no pooler
    model(input_ids=torch.randint(5, 100, (2, 8)), labels=torch.tensor([0, 1])).loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_a_block_module_named_like_a_head_is_not_the_head():
    from loratune.precision import under

    assert under("base_model.model.head.dense.weight", ["head"]) and under("head", ["head"])
    assert not under("model.layers.0.attention.self.head.weight", ["head"])
    assert not under("base_model.model.pre_classifier.weight", ["classifier"])


def _config_folder(tmp_path, **cfg):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


ALBERT = {"model_type": "albert", "vocab_size": 100, "embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 4,
          "num_attention_heads": 2, "intermediate_size": 64}


def test_albert_blocks_are_found_and_its_shared_layer_counted_once(tmp_path, capsys):
    """ALBERT's linear layers sit in `albert_layer_groups.G.albert_layers.L.` (no `layer.N.` in the name): they were
    not found and every LoRA target was refused. One shared block runs at all 4 layers: one adapter per module."""
    from loratune.adapt import depth, num_blocks
    from loratune.cli import main

    albert = _meta("albert", **{k: v for k, v in ALBERT.items() if k != "model_type"})
    sites = resolve_targets(albert, AdapterConfig(target_modules=("all-linear",)))
    assert names(sites) == [f"albert.encoder.albert_layer_groups.0.albert_layers.0.{m}" for m in
                            ("attention.dense", "attention.key", "attention.query", "attention.value", "ffn",
                             "ffn_output")]
    qv = resolve_targets(albert, AdapterConfig(target_modules=("attn.q", "attn.v")))
    assert [s.relative for s in qv] == ["attention.query", "attention.value"]
    assert num_blocks(albert) == 1 and depth(albert) == 4
    folder = _config_folder(tmp_path, **ALBERT)
    assert main(["params", folder, "--ranks", "4", "--targets", "attn.q,attn.v", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_layers"] == 1 and report["depth"] == 4
    assert report["targets"][0]["modules"] == 2 and report["targets"][0]["rows"][0]["lora"] == 4 * 2 * (32 + 32)
    assert main(["params", folder, "--ranks", "4"]) == 0
    assert "4 layers run by 1 shared block(s)" in capsys.readouterr().out
    # plan's arithmetic takes one block of weights per layer: it says so rather than understating FLOPs
    assert main(["plan", folder]) == 2
    err = capsys.readouterr().err
    assert "runs 4 layers with 1 shared block(s)" in err and "loratune params" in err


def test_params_without_targets_skips_the_groups_a_model_outside_the_table_lacks(tmp_path, capsys):
    from loratune.cli import main

    folder = _config_folder(tmp_path, model_type="opt", vocab_size=100, hidden_size=32, num_hidden_layers=2,
                            ffn_dim=64, num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64)
    assert main(["params", folder, "--ranks", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [t["targets"] for t in report["targets"]] == [["all-linear"]]
    assert [tuple(s) for s in report["skipped"]] == [("attn.q", "attn.v"), ("attn.q", "attn.v", "ffn@top:2"),
                                                     ("attn",), ("attn", "ffn")]
    assert report["targets"][0]["modules"] == 2 * 6
    assert main(["params", folder, "--ranks", "4"]) == 0
    assert "skipped target sets this 'opt' has no layers for: attn.q + attn.v;" in capsys.readouterr().out
    # targets the user gave still must match: exit 2, naming --targets
    assert main(["params", folder, "--targets", "attn.q,attn.v"]) == 2
    err = capsys.readouterr().err
    assert "--targets attn.q,attn.v:" in err and "match no linear layer" in err


@pytest.mark.parametrize("saved, case, rows", [
    (["a", "b"], "same", [0, 1]),
    (["b", "a"], "reorder", [1, 0]),  # row 1 was trained for the data's first label, a
    (["x", "a"], "other", None),
    (["a", "a"], "other", None),
    (["LABEL_0", "LABEL_1"], "generic", None),
])
def test_a_folder_s_own_head_is_matched_to_the_data_s_labels_by_name(saved, case, rows):
    from loratune.models import own_head_case

    assert own_head_case(saved, ["a", "b"]) == (case, rows)


@pytest.mark.parametrize("model_type, kw, name", [
    ("bert", {}, "classifier"), ("roberta", {}, "classifier.out_proj"), ("llama", {"num_key_value_heads": 2}, "score"),
    ("distilbert", {"dim": 32, "hidden_dim": 64, "n_layers": 1, "n_heads": 2}, "classifier"),
])
def test_the_head_s_output_layer_is_the_one_with_a_row_per_label(model_type, kw, name):
    from loratune.models import head_projection

    if model_type != "distilbert":
        kw = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, **kw}
    found, module = head_projection(_meta(model_type, num_labels=3, **kw), 3)
    assert found == name and module.out_features == 3


def test_albert_layer_selections_count_layers_and_adapt_the_block_they_run():
    """Layer selections were counted in physical blocks (1 for ALBERT), so the default `ffn@top:2` and assess's own
    proposal were refused ("more layers than the model has (1)"). They count the layers a forward runs; each selected
    layer adapts the block it runs (with 2 groups over 4 layers: layers 0-1 run group 0, layers 2-3 group 1)."""
    from loratune.adapt import shared_blocks_note

    one = _meta("albert", **{k: v for k, v in ALBERT.items() if k != "model_type"})
    block = "albert.encoder.albert_layer_groups.0.albert_layers.0."
    sites = resolve_targets(one, AdapterConfig(target_modules=("attn.q", "attn.v", "ffn@top:2")))
    assert names(sites) == [block + m for m in ("attention.query", "attention.value", "ffn", "ffn_output")]
    sites = resolve_targets(one, AdapterConfig(target_modules=("attn.q",), layers_to_transform=(0, 3)))
    assert names(sites) == [block + "attention.query"]
    with pytest.raises(UserError, match=r"(?s)outside 0\.\.3.*this model has 4 layers"):
        resolve_targets(one, AdapterConfig(target_modules=("attn.q",), layers_to_transform=(0, 4)))
    assert "runs 4 layers through 1 shared block(s)" in shared_blocks_note(one)

    two = _meta("albert", num_hidden_groups=2, **{k: v for k, v in ALBERT.items() if k != "model_type"})
    groups = [resolve_targets(two, AdapterConfig(target_modules=(f"attn.q@{i}",)))[0].layer for i in range(4)]
    assert groups == [0, 0, 1, 1]  # as AlbertTransformer runs them
    assert [s.layer for s in resolve_targets(two, AdapterConfig(target_modules=("ffn.in@top:1",)))] == [1]


def test_a_model_without_shared_blocks_has_no_layers_note(bert):
    from loratune.adapt import shared_blocks_note

    assert shared_blocks_note(bert) is None
    assert [s.layer for s in resolve_targets(bert, AdapterConfig(target_modules=("attn.q@top:2",)))] == [2, 3]


def test_gpt2_blocks_of_conv1d_count_as_layers_for_full_fine_tuning():
    """GPT-2's projections are transformers' Conv1D: a full run recorded 0 layers, depth 0 and 0 adapted weights.
    LoRA targets still cover nn.Linear only (refused, as before, with the reason)."""
    from loratune.adapt import apply_adapter, count_params, depth, num_blocks, num_layers

    gpt2 = _meta("gpt2", n_embd=32, n_layer=3, n_head=2, n_positions=64, vocab_size=100, pad_token_id=0)
    assert (num_layers(gpt2), num_blocks(gpt2), depth(gpt2)) == (3, 3, 3)
    model, sites = apply_adapter(gpt2, AdapterConfig(method="full", target_modules=()))
    assert len(sites) == 12 and {s.layer for s in sites} == {0, 1, 2}
    per_layer = 32 * 96 + 32 * 32 + 32 * 128 + 128 * 32  # c_attn, attn.c_proj, c_fc, mlp.c_proj (in x out)
    assert count_params(model, sites, "full").adapted_weights == 3 * per_layer
    with pytest.raises(UserError, match="Conv1D"):
        resolve_targets(gpt2, AdapterConfig(target_modules=("all-linear",)))


@pytest.mark.parametrize("extra", [{}, {"bias": "all"}, {"bias": "lora_only"}, {"use_dora": True}])
@pytest.mark.parametrize("r", [4, 8])
def test_a_run_records_lora_per_rank_so_its_breakeven_is_the_params_tables(extra, r):
    """The compute breakeven of a trained run (tune's rank-sweep cap, lora-vs-full's cost-parity reason) divided the
    run's whole adapter count by r: with bias=all / lora_only or DoRA it also holds biases and magnitudes that do not
    grow with r (MiniLM q,v: 38 at bias=all r=4, 48 at r=8, 57 with DoRA, for `loratune params`' 64). run.json's
    params now carry LoRA's A and B per rank, and the breakeven from it is the params table's at every r."""
    from loratune.adapt import apply_adapter, count_params
    from loratune.search.protocol.common import breakeven_cap, breakeven_rank

    targets = ("attn.q", "attn.v")
    table = params_report(_meta("bert", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                intermediate_size=64, vocab_size=100), ranks=(r,), target_sets=(targets,)).targets[0]
    model, sites = apply_adapter(_meta("bert", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                       intermediate_size=64, vocab_size=100),
                                 AdapterConfig(r=r, target_modules=targets, **extra))
    p = json.loads(json.dumps(count_params(model, sites, "lora").to_dict()))  # as run.json holds it
    assert p["per_rank"] == table.per_rank == 4 * (64 + 64)
    assert p["adapter"] > r * p["per_rank"] if extra else p["adapter"] == r * p["per_rank"]
    assert breakeven_rank(p, r) == table.rank_at_third_adapted == 6  # 4 x 32 x 32 x 2 / 3 / 512 = 5.33
    assert breakeven_cap(p, r) == 5


def test_base_counts_the_models_trained_biases():
    """bias=all trains the model's own biases: "base" (the base model, head excluded) left them out (tiny BERT:
    23,200 instead of 23,808). It is the same whatever the adapter trains."""
    from loratune.adapt import apply_adapter, count_params

    def base(**extra):
        model, sites = apply_adapter(_meta("bert", hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                           intermediate_size=64, vocab_size=100),
                                     AdapterConfig(r=4, target_modules=("attn.q", "attn.v"), **extra))
        return count_params(model, sites, "lora")

    plain, biases, dora = base(), base(bias="all"), base(use_dora=True)
    assert plain.base == biases.base == dora.base
    assert plain.base == plain.total - plain.head - plain.adapter
    assert biases.adapter - plain.adapter > 0  # the biases are trained (adapter) and still the model's (base)
