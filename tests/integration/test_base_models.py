"""How loratune loads a base model folder: the weights' dtype whatever the checkpoint was saved in, a folder that
also holds a peft adapter, and the adapter card's plain-peft recipe for the bases loratune loads specially (a GGUF
file, a classifier with another label count)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from loratune import api
from loratune.config import ModelConfig, load_config

from support import _save_tokenizer, overrides


def _bert(folder, dtype=torch.float32, head_labels: int | None = None):
    """A tiny random-init BERT saved in `dtype` (config.json "dtype" says so), as a bare encoder or, with
    `head_labels`, a classifier of that many labels."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    kw = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=64, initializer_range=0.2)
    if head_labels:
        names = [f"other_{i}" for i in range(head_labels)]
        model = BertForSequenceClassification(BertConfig(**kw, num_labels=head_labels, id2label=dict(enumerate(names)),
                                                         label2id={n: i for i, n in enumerate(names)}))
    else:
        model = BertModel(BertConfig(**kw))
    model.to(dtype).save_pretrained(folder)
    return str(folder)


def _train(model, data, out, **extra):
    cfg = load_config(None, overrides(model, data, out, max_steps=4, eval_steps=2, **extra))
    return api.train(cfg, progress=False)


# --- the weights' dtype --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("saved", [torch.bfloat16, torch.float16])
def test_every_base_loader_gives_float32_weights_whatever_the_checkpoint_was_saved_in(saved, tmp_path):
    """transformers 5 loads a checkpoint in its saved dtype: a bf16 base came up in bf16 (its pooler then met the float32
    head input: 'mat1 and mat2 must have the same dtype'). Every loader of a base now gives float32 weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from loratune.models import load_causal_lm, load_classifier, load_encoder

    enc = _bert(tmp_path / "bert", saved)
    assert json.loads((tmp_path / "bert" / "config.json").read_text())["dtype"] == str(saved).split(".")[1]
    cfg = ModelConfig(name_or_path=enc)
    for model in (load_classifier(cfg, 3, False), load_encoder(cfg)):
        assert {p.dtype for p in model.parameters()} == {torch.float32}
    lm = tmp_path / "lm"
    tok = _save_tokenizer(lm)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                 bos_token_id=2, eos_token_id=3)).to(saved).save_pretrained(lm)
    model = load_causal_lm(ModelConfig(name_or_path=str(lm)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.parametrize("saved", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_half_precision_base_trains_with_a_float32_head_and_a_true_precision_record(saved, precision, intent_data,
                                                                                      tmp_path):
    """A bf16/fp16 checkpoint crashed training under bf16 (pooler: 'mat1 and mat2 must have the same dtype'; fp16:
    'mixed dtype (CPU)'), and under fp32 trained and saved the head in bf16 (fp16: diverged, NaN) while run.json said
    float32. Now it trains as a float32 checkpoint does: finite losses, the trained weights saved in float32, and
    run.json's precision what ran (bf16: the frozen linear layers held in bf16, precision.frozen_weights_in_bf16)."""
    base = _bert(tmp_path / "base", saved)
    run = _train(base, intent_data, tmp_path / "run", precision=precision)
    assert run["status"] == "completed"
    rec = run["precision"]
    assert rec["dtype"] == ("float32" if precision == "fp32" else "bfloat16")
    assert (rec["frozen_linear_bf16"] > 0) == (precision == "bf16")
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines() if x.strip()]
    losses = [p[k] for p in history for k in ("train/loss", "val/loss") if p.get(k) is not None]
    assert losses and all(math.isfinite(v) for v in losses)
    saved_weights = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert any("classifier" in k for k in saved_weights) and any("pooler" in k for k in saved_weights)
    assert {str(t.dtype) for t in saved_weights.values()} == {"torch.float32"}


def _llama(folder, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                                 bos_token_id=2, eos_token_id=3, initializer_range=0.2)
                     ).to(dtype).save_pretrained(folder)
    return str(folder)


def _dtypes(model) -> dict[str, set]:
    """The parameters' dtypes by kind: the body's frozen linear weights, the LoRA weights, and the rest (the head,
    the embeddings, the norms)."""
    kinds: dict[str, set] = {"frozen_linear": set(), "lora": set(), "rest": set()}
    linear = {f"{n}.{k}" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              for k in ("weight", "bias")}
    for name, p in model.named_parameters():
        kind = ("lora" if "lora_" in name else "frozen_linear" if name in linear
                and not any(h in name for h in ("lm_head", "classifier", "pooler")) else "rest")
        kinds[kind].add(p.dtype)
    return kinds


@pytest.mark.parametrize("saved", [torch.bfloat16, torch.float16, torch.float32])
def test_a_bf16_checkpoint_loads_its_frozen_weights_in_bf16_only_where_the_run_holds_them_so(saved, tmp_path):
    """Loaded in float32 always, a bf16 checkpoint's every frozen weight took a float32 copy that bf16 training cast
    back (a 7B model: 28 GB instead of 14 at its peak, on the device too). Now, for a run that holds them in bf16
    (frozen_bf16), a bf16 checkpoint's frozen linear weights load in bf16, and the rest (head, embeddings, norms) in
    float32; an fp16 or float32 checkpoint, and any other run, load float32."""
    from loratune.models import load_causal_lm, load_classifier

    lm = _llama(tmp_path / "lm", saved)
    for frozen_bf16 in (True, False):
        want = torch.bfloat16 if frozen_bf16 and saved == torch.bfloat16 else torch.float32
        kinds = _dtypes(load_causal_lm(ModelConfig(name_or_path=lm), frozen_bf16=frozen_bf16))
        assert kinds["frozen_linear"] == {want} and kinds["rest"] == {torch.float32}
    # the classifier loads float32 (its fresh head's draw as a float32 load's): bf16 training casts its frozen weights
    kinds = _dtypes(load_classifier(ModelConfig(name_or_path=_bert(tmp_path / "bert", saved)), 3, False))
    assert kinds["frozen_linear"] == kinds["rest"] == {torch.float32}


def _sft_run(lm, sft_data, out, monkeypatch, precision, bf16_load=True):
    """An SFT run of 3 steps on `lm`; returns (run.json, history, the trained model's dtypes by kind)."""
    from loratune import cli
    from loratune import precision as precision_mod
    from loratune import sft

    from test_sft import sft_overrides

    seen = {}
    load = sft.load_causal_lm

    def capture(*args, **kwargs):
        if not bf16_load:
            kwargs["frozen_bf16"] = False
        seen["model"] = load(*args, **kwargs)
        return seen["model"]

    monkeypatch.setattr(sft, "load_causal_lm", capture)
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out, max_steps=3, eval_steps=1, precision=precision,
                                                   target_modules="[attn.q, attn.v, ffn.out]")]) == 0
    monkeypatch.undo()
    run = json.loads((out / "run.json").read_text())
    history = [json.loads(x) for x in (out / "history.jsonl").read_text().splitlines() if x.strip()]
    return run, history, _dtypes(seen["model"])


def test_a_bf16_checkpoint_trains_as_its_float32_load_did(tmp_path, monkeypatch):
    """A bf16 checkpoint trained under bf16 with its frozen weights loaded in bf16 (half the memory): the body's
    frozen linear weights bf16, the head, embeddings, norms and LoRA weights float32, and every loss and the record
    the same as with the float32 load (bf16 -> float32 -> bf16 is exact; the LoRA draw kept float32). Under fp32:
    every weight float32."""
    from transformers import LlamaForCausalLM

    from sft_support import tiny_sft_inputs

    lm, sft_data = tiny_sft_inputs(tmp_path)
    LlamaForCausalLM.from_pretrained(lm).to(torch.bfloat16).save_pretrained(lm)
    run, history, kinds = _sft_run(lm, sft_data, tmp_path / "bf16", monkeypatch, "bf16")
    assert kinds == {"frozen_linear": {torch.bfloat16}, "lora": {torch.float32}, "rest": {torch.float32}}
    ref_run, ref_history, ref_kinds = _sft_run(lm, sft_data, tmp_path / "ref", monkeypatch, "bf16", bf16_load=False)
    assert ref_kinds == kinds  # the float32 load, cast by frozen_weights_in_bf16
    assert run["precision"] == ref_run["precision"] and run["precision"]["frozen_linear_bf16"] == 2 * 7
    assert any(p.get("train/loss") for p in history)
    assert [p.get("train/loss") for p in history] == [p.get("train/loss") for p in ref_history]
    assert [p.get("val/loss") for p in history] == [p.get("val/loss") for p in ref_history]
    fp32_run, _, fp32_kinds = _sft_run(lm, sft_data, tmp_path / "fp32", monkeypatch, "fp32")
    assert {d for v in fp32_kinds.values() for d in v} == {torch.float32}
    assert fp32_run["precision"]["dtype"] == "float32" and fp32_run["precision"]["frozen_linear_bf16"] == 0


def test_bf16_training_casts_the_classifiers_frozen_weights_before_the_model_moves(intent_data, tmp_path,
                                                                                   monkeypatch):
    """model.to(device) ran before the frozen weights were cast to bf16: a GPU held the whole float32 model first (a
    7B model: 28 GB where 14 were planned). Now the cast comes first: the model reaches the device with its frozen
    linear weights in bf16, and trains as before."""
    import torch.nn as nn

    moved = []
    to = nn.Module.to

    def spy(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and any("lora_" in n for n, _ in self.named_parameters()):
            moved.append({p.dtype for p in self.parameters()})
        return to(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "to", spy)
    run = _train(_bert(tmp_path / "base", torch.bfloat16), intent_data, tmp_path / "run", precision="bf16")
    assert run["status"] == "completed" and run["precision"]["frozen_linear_bf16"] > 0
    assert moved and torch.bfloat16 in moved[0]


# --- a base folder that also holds a peft adapter ------------------------------------------------------------------

def _with_adapter(tmp_path):
    """A tiny BERT folder with a peft LoRA adapter saved into it beside config.json and model.safetensors (its
    adapter_config.json names the folder itself as the base)."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    folder = tmp_path / "both"
    _bert(folder)
    peft_model = get_peft_model(BertModel.from_pretrained(folder), LoraConfig(r=2, target_modules=["query", "value"]))
    peft_model.save_pretrained(folder)
    assert {"adapter_config.json", "config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    return str(folder)


@pytest.mark.parametrize("targets", ["[attn.q, attn.v]", "[attn.k]"])
def test_a_base_folder_holding_a_peft_adapter_is_refused_with_the_fix(targets, intent_data, tmp_path, capsys):
    """transformers loaded such a folder with the adapter injected: loratune said "'attn.q', 'attn.v' ... match no
    linear layer" (the layers being peft's lora_A.default...), or with targets [attn.k] trained on top of the adapter
    silently. Now: exit 2 naming the adapter and the fix (train.init_from, or move the adapter's files)."""
    from loratune import cli

    base = _with_adapter(tmp_path)
    code = cli.main(["train", "-q", *overrides(base, intent_data, tmp_path / "run", max_steps=2,
                                                target_modules=targets)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err
    assert f"model folder '{base}' holds a peft adapter (adapter_config.json)" in err
    assert "train.init_from" in err and "match no linear layer" not in err
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_pure_adapter_folder_as_the_base_is_refused_without_the_move_fix(tmp_path, capsys):
    """A folder holding only a peft adapter (no config.json, no model weights) given as the base: the refusal offered
    "or move adapter_config.json and the adapter's weights out of the folder", which leaves no model at all. Now the
    fix names train.init_from alone; a folder that also holds a model keeps the move half."""
    from loratune.errors import UserError
    from loratune.models import resolve_model

    both = _with_adapter(tmp_path)
    pure = tmp_path / "pure"
    pure.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (pure / name).write_bytes((tmp_path / "both" / name).read_bytes())
    with pytest.raises(UserError) as pure_err:
        resolve_model(ModelConfig(name_or_path=str(pure)))
    assert "train.init_from" in pure_err.value.fix and "move" not in pure_err.value.fix
    with pytest.raises(UserError) as both_err:
        resolve_model(ModelConfig(name_or_path=both))
    assert "train.init_from" in both_err.value.fix and "move adapter_config.json" in both_err.value.fix


# --- the adapter card's plain-peft recipes -------------------------------------------------------------------------

AUTO_BLOCK = "(continuing from the code above):\n\n"


def test_the_card_recipes_run_as_written_on_a_classifier_base_of_another_label_count(intent_data, tmp_path):
    """loratune loads a base saved as a 3-label classifier for 4-label data with ignore_mismatched_sizes=True and a fresh
    head; the card's from_pretrained(BASE, **head) lacked it ('size mismatch for classifier.weight'). Both recipes
    (PeftModel, and peft's auto class) now run as written and give loratune's predictions."""
    base = _bert(tmp_path / "clf3", head_labels=3)
    out = tmp_path / "run"
    assert _train(base, intent_data, out)["status"] == "completed"
    _check_card_recipes(out, base)
    label_map = json.loads((out / "adapter" / "label_map.json").read_text())
    assert label_map["base_args"] == {"ignore_mismatched_sizes": True}


def test_the_card_recipes_of_a_plain_base_pass_nothing_extra(tiny_bert, intent_data, tmp_path):
    out = tmp_path / "run"
    assert _train(tiny_bert, intent_data, out)["status"] == "completed"
    assert json.loads((out / "adapter" / "label_map.json").read_text())["base_args"] == {}
    card = (out / "adapter" / "README.md").read_text()
    assert "ignore_mismatched_sizes" not in card and "gguf_file" not in card
    _check_card_recipes(out, tiny_bert)


def _check_card_recipes(out, base):
    from support import card_recipe

    texts = ["lost my card please", "what is my balance"]
    preds = [p["label"] for p in api.predict(str(out), texts)]
    scope = card_recipe(out, {"BASE": base}, after="Without loratune:\n\n")
    labels = scope["labels"]
    batch = scope["tokenizer"](texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        assert [labels[i] for i in scope["model"].eval()(**batch).logits.argmax(-1).tolist()] == preds
    printed = []
    card_recipe(out, {**scope, "print": printed.append}, after=AUTO_BLOCK)  # loads adapter_config.json's base
    assert printed and printed[0][0]["label"] in labels
    with torch.no_grad():
        assert [labels[i] for i in scope["model"].eval()(**batch).logits.argmax(-1).tolist()] == preds


def test_the_card_recipe_of_a_gguf_base_names_its_folder_and_passes_the_file(intent_data, tmp_path):
    """A GGUF base (embedded:smollm2 is one): the card said BASE was the .gguf file, and from_pretrained(BASE, **head)
    raised OSError; adapter_config.json names the folder, so peft's auto class failed too. Now BASE is the folder and
    both recipes pass gguf_file (the text is checked here: a GGUF model takes minutes to train; the recipe was run by
    hand on SmolLM2)."""
    import re

    from loratune.data import LabelSpace
    from loratune.train import card_base_args, model_card

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "tiny.gguf").write_bytes(b"GGUF")  # resolve_model reads only its path
    cfg = load_config(None, overrides(str(tmp_path / "m" / "tiny.gguf"), intent_data, tmp_path / "run"))
    args = card_base_args({"gguf_file": "tiny.gguf"})  # a label map of a run made before base_args
    card = model_card(cfg, LabelSpace(("a", "b"), False), True, base_args=args)
    assert args == {"gguf_file": "tiny.gguf"}
    assert f"BASE below is the folder holding it (`base_model_path` in `label_map.json`: `{tmp_path / 'm'}`)" in card
    code = re.findall(r"```python\n(.*?)```", card, re.S)
    assert "head['gguf_file'] = 'tiny.gguf'" in code[0] and "from_pretrained(BASE, **head)" in code[0]
    assert "from_pretrained(\"adapter\", **head," in code[1]
