"""Architectures whose layout the generic path got wrong: ALBERT's one shared block run at every layer (layer
selections, `show`), and a head with a dotted path (BERT's and ALBERT's trained pooler) in the saved adapter."""

from __future__ import annotations

import json

import pytest

from loratune.cli import main
from loratune.store import RunStore

from support import _save_tokenizer, flat, overrides


@pytest.fixture(scope="module")
def tiny_albert(tmp_path_factory) -> str:
    """A tiny random-init ALBERT: 3 layers, all run by its one shared block (as released ALBERTs)."""
    import torch
    from transformers import AlbertConfig, AlbertModel

    folder = tmp_path_factory.mktemp("tiny-albert")
    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    AlbertModel(AlbertConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32, num_hidden_layers=3,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=64, pad_token_id=0,
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(folder)
    return str(folder)


def _train(model, data, out, **extra) -> list[str]:
    """A tiny run with loratune's default target_modules (overrides() names some) unless `extra` gives them."""
    args = overrides(model, data, out, slices="false", robustness_probe="false", **extra)
    return ["train", "-q", *[a for a in args if not a.startswith("target_modules=") or "target_modules" in extra]]


def test_albert_trains_with_the_default_targets_and_show_prints_its_depth(tiny_albert, intent_data, tmp_path,
                                                                          capsys):
    out = tmp_path / "run"
    assert main(_train(tiny_albert, intent_data, out)) == 0  # attn.q, attn.v, ffn@top:2 (was: "top:2 ... (1)")
    run = RunStore(out).read_run()
    assert run["status"] == "completed"
    assert (run["model"]["num_layers"], run["model"]["depth"], run["model"]["adapted_modules"]) == (1, 3, 4)
    assert "runs 3 layers through 1 shared block(s)" in run["model"]["layers_note"]
    capsys.readouterr()
    assert main(["show", str(out)]) == 0
    text = flat(capsys.readouterr().out)
    assert "albert, 3 layers (1 shared block)" in text and "1 layers" not in text


def test_albert_takes_a_layer_list_over_its_layers(tiny_albert, intent_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dry-run", *overrides(tiny_albert, intent_data, out, layers_to_transform="[0,2]")]) == 0
    assert main(["train", "--dry-run", *overrides(tiny_albert, intent_data, out, layers_to_transform="[0,3]")]) == 2
    assert "outside 0..2" in flat(capsys.readouterr().err)


@pytest.mark.parametrize("arch", ["bert", "albert"])
def test_the_saved_adapter_config_lists_the_trained_pooler(arch, request, tiny_albert, tiny_bert, intent_data,
                                                           tmp_path):
    """The pooler is trained and saved with the head, but adapter_config.json's modules_to_save kept only
    `classifier`: plain peft (is_trainable=True) then froze the pooler and a re-save lost it."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    assert main(_train(tiny_albert if arch == "albert" else tiny_bert, intent_data, out,
                       target_modules="[attn.q, attn.v]")) == 0
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())["modules_to_save"]
    assert sorted(saved) == sorted([f"{arch}.pooler", "classifier"])
    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any(f".{arch}.pooler." in k for k in tensors)
    # plain peft, as a user continuing training would load it: the pooler trains (and is saved again)
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_albert if arch == "albert" else tiny_bert, num_labels=len(RunStore(out).read_run()["labels"]))
    model = PeftModel.from_pretrained(base, out / "adapter", is_trainable=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(f"{arch}.pooler.modules_to_save.default." in n for n in trainable)


def test_a_targets_layer_list_on_the_command_line_adapts_those_layers(tiny_bert, intent_data, tmp_path, capsys):
    # `target_modules=ffn@0,1` was split at the comma: "'1' match no linear layer of this 'bert' model"
    from loratune import api
    from loratune.config import load_config

    out = tmp_path / "run"
    for given in ("ffn@0,1", "[ffn@0,1]"):
        assert main(["train", "--dry-run", *overrides(tiny_bert, intent_data, out, target_modules=given)]) == 0
        assert "adapted modules: 4" in flat(capsys.readouterr().out)
        plan = api.plan(load_config(None, overrides(tiny_bert, intent_data, out, target_modules=given)))
        assert sorted(plan["adapted_modules"]) == sorted(f"bert.encoder.layer.{i}.{m}" for i in (0, 1)
                                                         for m in ("intermediate.dense", "output.dense"))
