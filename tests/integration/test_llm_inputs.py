"""Inputs a causal-lm run (or `loratune plan`) cannot use are refused up front with a UserError (exit 2, a fix,
no traceback): an encoder as a causal LM, a chat template that raises, a prompt-set metric whose group has no
rows, an attention-free architecture or an empty target list in `plan`, generated labels that read back alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratune import cli
from loratune.config import ModelConfig

from sft_support import make_chatml_tokenizer, make_sft_rows, make_tokenizer, save_tiny_llama_lm
from support import make_rows, write_jsonl

# the Mistral-7B-Instruct v0.1 style: a system turn is refused from inside the template
RAISING_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                    "{{ raise_exception('System role not supported') }}{% endif %}"
                    "<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                    "{% if add_generation_prompt %}<|assistant|> {% endif %}")


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sft-data")
    write_jsonl(folder / "train.jsonl", make_sft_rows(4, seed=1))
    write_jsonl(folder / "validation.jsonl", make_sft_rows(1, seed=2))
    return folder


def _args(model: str, data: Path, out: Path, **extra) -> list[str]:
    base = {"task": "causal-lm", "name_or_path": model, "dataset_name": str(data), "output_dir": str(out),
            "max_steps": 2, "eval_steps": 1, "per_device_train_batch_size": 4, "target_modules": "[attn.q]",
            "r": 2, "lora_alpha": 4, "max_length": 32, "max_new_tokens": 4}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _refused(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return " ".join(err.split())


# --- 1. an encoder is not a causal LM ------------------------------------------------------------------------


def test_an_encoder_under_causal_lm_is_refused_before_training(tiny_bert, sft_data, tmp_path, capsys):
    out = tmp_path / "run"
    err = _refused(capsys, ["train", "-q", *_args(tiny_bert, sft_data, out)])
    assert f"model '{tiny_bert}' is an encoder (bert, is_decoder=False)" in err
    assert "use a decoder" in err and "task=classification" in err
    assert not out.exists()


def test_decoders_whose_configs_say_is_decoder_false_still_load(lm, tmp_path):
    import torch
    from transformers import BertConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig

    from loratune.models import is_bidirectional_encoder, load_causal_lm

    torch.manual_seed(0)
    gpt2 = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)).save_pretrained(gpt2)
    for folder in (gpt2, lm):
        model = load_causal_lm(ModelConfig(name_or_path=str(folder), task="causal-lm"), pad_token_id=0)
        assert type(model).__name__ in ("GPT2LMHeadModel", "LlamaForCausalLM")
    assert not is_bidirectional_encoder(GPT2Config()) and not is_bidirectional_encoder(LlamaConfig())
    assert is_bidirectional_encoder(BertConfig()) and not is_bidirectional_encoder(BertConfig(is_decoder=True))


# --- 2. a chat template that raises --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raising_chat(tmp_path_factory) -> tuple[str, Path]:
    folder = tmp_path_factory.mktemp("raising-template")
    model = save_tiny_llama_lm(folder / "model", chat_template=True)
    tok = make_tokenizer(chat_template=True)
    tok.chat_template = RAISING_TEMPLATE
    tok.save_pretrained(model)
    chats = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": r["prompt"]},
                           {"role": "assistant", "content": r["completion"]}]} for r in make_sft_rows(3, seed=5)]
    data = folder / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", chats)
    return model, data


@pytest.mark.parametrize("command", ["train", "dry-run", "assess"])
def test_a_chat_template_that_raises_is_a_user_error_with_the_fix(command, raising_chat, tmp_path, capsys):
    model, data = raising_chat
    args = _args(model, data, tmp_path / "run")
    argv = {"train": ["train", "-q", *args], "dry-run": ["train", "--dry-run", *args],
            "assess": ["assess", *args[:3]]}[command]
    err = _refused(capsys, argv)
    assert "chat template refuses a chat with the turns (system, user" in err and "System role not supported" in err
    assert "example 1 of" in err
    assert "merge the system turn into the user turn" in err and "chat_template=plain" in err


@pytest.mark.parametrize("command", ["train", "dry-run"])
@pytest.mark.parametrize("template", ["raising", "none"])
def test_a_prompt_set_prompt_the_template_cannot_write_names_the_file_and_row(command, template, raising_chat, lm,
                                                                              sft_data, tmp_path, capsys):
    """A prompt-set prompt the chat template could not render was named 'example 1 of 4 (prompt ...)', as if a
    training example, and under chat_template=none its fix spoke of 'chat data': the file and its row are named."""
    rows = [{"prompt": r["prompt"], "reference": r["completion"], "group": "novel"} for r in make_sft_rows(3, seed=3)]
    rows[1]["prompt"] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "lost my card"}]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    model, extra = (raising_chat[0], {}) if template == "raising" else (lm, {"chat_template": "none"})
    args = _args(model, sft_data, tmp_path / "run", prompt_set=prompts, **extra)  # training rows have no system turn
    err = _refused(capsys, ["train", "-q", *args] if command == "train" else ["train", "--dry-run", *args])
    assert f"prompt set '{prompts}' row 2 (prompt 'be brief lost my card'): " in err
    assert "example " not in err and "chat data" not in err
    if template == "raising":
        assert "chat template refuses a chat with the turns (system, user): System role not supported" in err
    else:
        assert "data.chat_template=none cannot write a chat of several turns" in err
        assert "use chat_template=auto or plain for prompts of several turns, or write the prompt as one text" in err


# --- 3. a prompt-set metric whose group has no rows ---------------------------------------------------------


def test_a_prompt_metric_of_a_group_the_prompt_set_lacks_is_refused(lm, sft_data, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["prompt"], "reference": r["completion"],
                                                        "group": "novel"} for r in make_sft_rows(1, seed=3)])
    out = tmp_path / "run"
    err = _refused(capsys, ["train", "-q", *_args(lm, sft_data, out, prompt_set=prompts,
                                                  metric_for_best_model="prompt_familiar_chrf")])
    assert "prompt_familiar_chrf scores the prompt set's 'familiar' rows, and data.prompt_set has none" in err
    assert "its groups: novel" in err and "cannot be scored" in err
    assert 'add rows with "group": "familiar"' in err and "prompt_novel_chrf" in err
    assert not (out / "run.json").exists() or json.loads((out / "run.json").read_text()).get("status") != "completed"


# --- 3b. a max_length past a decoder's learned positions ----------------------------------------------------


def _tiny_opt(folder: Path, tok=None) -> Path:
    """A tiny OPT (learned positions: 64) with the tests' tokenizer (or `tok`)."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    tok = tok if tok is not None else make_tokenizer()
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                             num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=64,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    return folder


def test_a_max_length_past_a_decoder_s_learned_positions_is_refused_by_train_and_plan(lm, sft_data, tmp_path,
                                                                                      capsys):
    """OPT's learned positions (64 here, 2048 in OPT-1.3B): train task=causal-lm and plan skipped the check for every
    causal LM ('rotary there'), and the run failed inside the embedding (IndexError) at its first batch. A rotary
    decoder (the tiny Llama, 256 positions) has no such limit, and is not refused."""
    folder = _tiny_opt(tmp_path / "opt")
    opt = {"target_modules": "[self_attn.q_proj]"}  # OPT is not in the group table
    for dry in (["--dry-run"], []):
        out = tmp_path / f"run{len(dry)}"
        err = _refused(capsys, ["train", "-q", *dry, *_args(str(folder), sft_data, out, max_length=65, **opt)])
        assert f"model.max_length 65 is longer than {folder} takes: its position embeddings cover 64 tokens" in err
        assert "set max_length=64 or less" in err and not (out / "run.json").exists()
    err = _refused(capsys, ["plan", str(folder), "--seq-len", "65"])
    assert "--seq-len 65 is longer than" in err and "cover 64 tokens" in err and "give --seq-len 64 or less" in err
    assert cli.main(["train", "-q", "--dry-run", *_args(str(folder), sft_data, tmp_path / "ok", max_length=64,
                                                        **opt)]) == 0
    assert cli.main(["plan", str(folder), "--seq-len", "64", "--json"]) == 0
    assert cli.main(["train", "-q", "--dry-run", *_args(lm, sft_data, tmp_path / "rope", max_length=512)]) == 0
    capsys.readouterr()


def test_assess_of_a_causal_lm_refuses_a_max_length_past_its_positions_as_train_does(sft_data, tmp_path, capsys):
    """assess task=causal-lm on OPT (64 positions) at max_length 65 measured truncation at 65 and proposed a start
    config, where train refuses the same config: refused up front with the check train runs."""
    folder = _tiny_opt(tmp_path / "opt")
    args = _args(str(folder), sft_data, tmp_path / "run", max_length=65, target_modules="[self_attn.q_proj]")
    err = _refused(capsys, ["assess", *args])
    assert f"model.max_length 65 is longer than {folder} takes: its position embeddings cover 64 tokens" in err
    assert "set max_length=64 or less" in err
    fits = _args(str(folder), sft_data, tmp_path / "run", max_length=64, target_modules="[self_attn.q_proj]")
    assert cli.main(["assess", "--json", *fits]) == 0
    assert json.loads(capsys.readouterr().out)["facts"]["truncated_share_at_max_length"] == 0.0


def test_the_position_check_covers_the_tokens_the_run_generates(sft_data, tmp_path, capsys):
    """check_max_length took max_length alone: OPT (64 positions) at max_length 64 with a prompt set passed the dry
    run, and training failed at its first evaluation (IndexError: a prompt cut to 64 tokens, then max_new_tokens
    generated past the table). The limit covers max_length and what is generated after it (the prompt set's
    max_new_tokens, a generated label's tokens), and the values the fix names train."""
    from loratune.sft import label_token_cap

    folder = _tiny_opt(tmp_path / "opt")
    long = " ".join(["please reset my card pin and tell me the balance"] * 20)  # cut to max_length
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": long, "reference": "ok", "group": "familiar"}])
    opt = {"target_modules": "[self_attn.q_proj]", "prompt_set": prompts, "max_new_tokens": 8, "max_steps": 1}
    for dry in (["--dry-run"], []):
        out = tmp_path / f"run{len(dry)}"
        err = _refused(capsys, ["train", "-q", *dry, *_args(str(folder), sft_data, out, **{**opt, "max_length": 60})])
        assert (f"model.max_length 60 plus the 8 tokens generated after a prompt-set prompt (train.max_new_tokens) "
                f"are longer than {folder} takes: its position embeddings cover 64 tokens") in err
        assert "fix: set max_length=56 or less, or train.max_new_tokens=4 or less" in err
        assert not (out / "run.json").exists()
    err = _refused(capsys, ["train", "-q", "--dry-run", *_args(str(folder), sft_data, tmp_path / "at",
                                                               **{**opt, "max_length": 64})])
    assert "model.max_length 64 plus the 8 tokens" in err and "fix: set max_length=56 or less" in err
    assert "max_new_tokens=" not in err.split("fix:")[1]  # none works at max_length 64
    for i, fixed in enumerate(({"max_length": 56}, {"max_length": 60, "max_new_tokens": 4})):  # each fix trains
        out = tmp_path / f"fixed{i}"
        assert cli.main(["train", "-q", *_args(str(folder), sft_data, out, **{**opt, **fixed})]) == 0
        assert json.loads((out / "run.json").read_text())["status"] == "completed"
    # generated labels: each val text's prompt cut to max_length, then the longest label's tokens and 2
    rows = make_rows(8, seed=1)
    data = tmp_path / "labelled"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows)
    new = label_token_cap(make_tokenizer(), sorted({r["label"] for r in rows}))
    gen = {"target_modules": "[self_attn.q_proj]", "label_format": "generate"}
    err = _refused(capsys, ["train", "-q", "--dry-run", *_args(str(folder), data, tmp_path / "gen",
                                                               **{**gen, "max_length": 64})])
    assert (f"model.max_length 64 plus the {new} tokens generated for a label (data.label_format=generate: the "
            f"longest label's tokens and 2) are longer than {folder}") in err
    assert f"fix: set max_length={64 - new} or less" in err and "max_new_tokens=" not in err
    assert cli.main(["train", "-q", "--dry-run", *_args(str(folder), data, tmp_path / "genok",
                                                        **{**gen, "max_length": 64 - new})]) == 0
    capsys.readouterr()


def test_the_position_check_counts_the_answer_prefix_a_template_writes(sft_data, tmp_path, capsys):
    """A template that writes a fixed answer prefix (Qwen3's empty think block, 4 tokens here) has it generated on top
    of max_new_tokens (sft.answer_tokens): the position check counts it, and the max_new_tokens it names fits."""
    folder = _tiny_opt(tmp_path / "opt", make_chatml_tokenizer(think=True))
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": "lost my card", "reference": "ok", "group": "familiar"}])
    opt = {"target_modules": "[self_attn.q_proj]", "prompt_set": prompts, "max_new_tokens": 8, "max_length": 56}
    err = " ".join(_refused(capsys, ["train", "-q", "--dry-run", *_args(str(folder), sft_data, tmp_path / "r",
                                                                           **opt)]).split())
    assert ("model.max_length 56 plus the 12 tokens generated after a prompt-set prompt (train.max_new_tokens, after "
            "the 4 tokens the chat template writes before every answer) are longer than") in err
    assert "fix: set max_length=52 or less, or train.max_new_tokens=4 or less" in err
    for i, fixed in enumerate(({"max_length": 52}, {"max_new_tokens": 4})):
        assert cli.main(["train", "-q", "--dry-run", *_args(str(folder), sft_data, tmp_path / f"ok{i}",
                                                            **{**opt, **fixed})]) == 0
    capsys.readouterr()


def test_the_position_check_and_the_model_load_read_the_config_once(tmp_path, monkeypatch):
    """check_max_length read the model's config for every causal-lm run (tune: twice) and load_causal_lm read it
    again: a GGUF file's metadata parsed each time (3.9-5.9 s for SmolLM2's). The config is read once per source and
    the model built from it; a rewritten config.json is read again."""
    from transformers import PretrainedConfig

    from loratune.config import load_config
    from loratune.errors import UserError
    from loratune.model_info import check_max_length
    from loratune.models import load_causal_lm

    folder = _tiny_opt(tmp_path / "opt")
    reads = []
    read = PretrainedConfig.get_config_dict.__func__
    monkeypatch.setattr(PretrainedConfig, "get_config_dict",
                        classmethod(lambda cls, *a, **k: reads.append(a[0]) or read(cls, *a, **k)))
    cfg = load_config(None, [f"name_or_path={folder}", "task=causal-lm", "max_length=64"])
    check_max_length(cfg)
    check_max_length(cfg)  # tune checks twice
    model = load_causal_lm(cfg.model, pad_token_id=0)
    assert model.config.max_position_embeddings == 64 and len(reads) == 1
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 32}, indent=1))
    with pytest.raises(UserError) as err:
        check_max_length(cfg)
    assert "its position embeddings cover 32 tokens" in err.value.problem and len(reads) == 2


# --- 4. `loratune plan`: no attention heads, no targets -----------------------------------------------------


def test_plan_refuses_an_architecture_without_attention_heads(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "mamba", "architectures": ["MambaForCausalLM"], "hidden_size": 256,
                               "num_hidden_layers": 2, "vocab_size": 1000}))
    err = _refused(capsys, ["plan", str(cfg)])
    assert "'mamba' is an architecture without attention heads" in err
    assert "plan covers transformer encoders and decoders" in err


@pytest.mark.parametrize("targets", [",,", ",", " "])
def test_plan_refuses_an_empty_target_list_as_params_does(targets, capsys):
    err = _refused(capsys, ["plan", "llama-2-7b", "--targets", targets])
    assert "match no linear layer of this 'llama' model" in err
    params_err = _refused(capsys, ["params", "llama-2-7b", "--targets", ","])
    assert "match no linear layer of this 'llama' model" in params_err


# --- 5. generated labels that read back alike ---------------------------------------------------------------


@pytest.mark.parametrize("renamed, named", [
    ({"pin": "PIN"}, "labels 'PIN', 'pin' are the same text once normalised ('pin')"),
    ({"pin": "..."}, "label(s) '...' are nothing once lower-cased"),
    ({"pin": "pin\nreset"}, "label(s) 'pin\\nreset' hold a line break"),
])
def test_generated_labels_that_cannot_be_told_apart_are_refused(renamed, named, lm, tmp_path, capsys):
    rows = make_rows(6, seed=1)
    old, new = next(iter(renamed.items()))
    if new.lower() == old:  # a clash: half the rows keep the old spelling
        rows = [dict(r, label=new) if r["label"] == old and i % 2 else r for i, r in enumerate(rows)]
    else:
        rows = [dict(r, label=new) if r["label"] == old else r for r in rows]
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows)
    out = tmp_path / "run"
    err = _refused(capsys, ["train", "-q", *_args(lm, data, out, label_format="generate")])
    assert "data.label_format=generate writes each label as text" in err and named in err
    assert "rename the labels" in err
    assert not out.exists()


def test_the_label_set_check_is_the_parser_s_normaliser():
    from loratune.metrics import generated_label_problems, normalize_label, parse_labels

    assert generated_label_problems(("balance", "card_lost", "pin")) == []
    assert normalize_label("Card_Lost.") == "card_lost"
    assert parse_labels(["PIN"], ("pin", "balance")).tolist() == [0]


def test_generated_labels_refuse_an_empty_text(lm, tmp_path, capsys):
    # label_format=generate took an empty text as a prompt with nothing to answer (a classifier refuses it)
    rows = make_rows(6, seed=1)
    rows[3] = dict(rows[3], text="   ")
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", rows)
    err = _refused(capsys, ["train", "-q", *_args(lm, data, tmp_path / "run", label_format="generate")])
    assert "empty text(s)" in err and "line 4" in err


def test_the_adapter_card_recipe_runs_as_written_on_a_decoder_classifier(tiny_llama, intent_data, tmp_path, capsys):
    """The card's 'Without loratune' code failed on a decoder (no pad token: 'Cannot handle batch sizes > 1'):
    executed as written, it gives the logits `loratune predict` gives."""
    import torch

    from loratune import api
    from support import card_recipe, overrides

    out = tmp_path / "run"
    assert cli.main(["train", "-q", *overrides(tiny_llama, intent_data, out, max_steps=4, eval_steps=4,
                                               layers_to_transform="top:1")]) == 0
    scope = card_recipe(out, {"BASE": tiny_llama}, after="Without loratune:\n\n")
    texts = ["lost my card please", "what is my balance"]
    batch = scope["tokenizer"](texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = scope["model"].eval()(**batch).logits
    preds = api.predict(str(out), texts)
    labels = json.loads((out / "adapter" / "label_map.json").read_text())["labels"]
    assert [labels[i] for i in logits.argmax(-1).tolist()] == [p["label"] for p in preds]
