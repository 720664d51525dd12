"""Task causal-lm end to end on a tiny random-init Llama (hidden 32, 2 layers, a word-level tokenizer):
the CLI run and its record, prompt-set generations, the adapter with plain peft, full fine-tuning, chats."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from loratune import cli
from loratune.adapt import apply_adapter
from loratune.config import load_config
from loratune.models import load_causal_lm, load_tokenizer
from loratune.sft import generate, save_lm
from loratune.sft_data import Example, Renderer, Turn, encode_prompts
from loratune.store import RunStore

from sft_support import ANSWERS, make_chatml_tokenizer, make_sft_rows, save_tiny_llama_lm
from support import full_drops_lora_keys, make_rows, write_jsonl

STEPS, EVERY = 12, 4


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sft-data")
    write_jsonl(folder / "train.jsonl", make_sft_rows(8, seed=1))
    write_jsonl(folder / "validation.jsonl", make_sft_rows(2, seed=2))
    held_out = make_sft_rows(1, seed=3)
    write_jsonl(folder / "prompt_set.jsonl", [{"prompt": r["prompt"], "reference": r["completion"], "group": g}
                                              for r, g in zip(held_out, ("familiar", "novel", "familiar", "novel"))])
    return folder


def sft_overrides(model: str, data: Path, out: Path, **extra) -> list[str]:
    base = {"task": "causal-lm", "name_or_path": model, "dataset_name": str(data), "output_dir": str(out),
            "max_steps": STEPS, "eval_steps": EVERY, "per_device_train_batch_size": 8, "learning_rate": 1e-2,
            "target_modules": "[attn.q, attn.v]", "r": 4, "lora_alpha": 8, "max_length": 32, "max_new_tokens": 6}
    base.update(extra)
    return [f"{k}={v}" for k, v in full_drops_lora_keys(base).items()]


@pytest.fixture(scope="module")
def sft_run(lm, sft_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft-run") / "run"
    code = cli.main(["train", "-q", *sft_overrides(lm, sft_data, out,
                                                   prompt_set=sft_data / "prompt_set.jsonl")])
    assert code == 0
    return out


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]


def test_the_cli_run_records_loss_perplexity_and_token_accuracy_at_every_eval(sft_run):
    run = json.loads((sft_run / "run.json").read_text())
    assert (run["task"], run["status"], run["objective"], run["template"]) == ("causal-lm", "completed",
                                                                               "val/loss", "plain")
    assert run["rows"] == {"train": 32, "train_eval": 32, "val": 8}
    assert run["params"]["head"] == 0 and 0 < run["params"]["trainable"] < run["params"]["total"]
    hist = _history(sft_run)
    assert [p["step"] for p in hist] == [0, 4, 8, 12]
    for p in hist:
        # step 0 scores the base model on val only (train.STEP0_SPLITS, as a classifier's run)
        for prefix in ("val", "train_eval") if p["step"] else ("val",):
            assert math.isclose(p[f"{prefix}/perplexity"], math.exp(p[f"{prefix}/loss"]), rel_tol=1e-9)
            assert 0.0 <= p[f"{prefix}/token_accuracy"] <= 1.0
        # the completion tokens of 8 validation rows: "your card is blocked" style answers (4 words) + EOS
        assert p["val/tokens"] == 8 * 5
    assert not any(k.startswith("train_eval/") for k in hist[0])
    assert run["evaluation"]["step0"] == ["val"] and run["evaluation"]["budget_rows"] is None  # eval_steps given
    assert all("train/loss" in p and "train/grad_norm" in p for p in hist[1:]) and "train/loss" not in hist[0]
    # a learning run: lr 1e-2 on a 4-answer task lowers the val loss well below the untrained model's
    assert hist[-1]["val/loss"] < hist[0]["val/loss"] - 0.3, [p["val/loss"] for p in hist]
    assert run["best"]["step"] == run["adapter_step"] == min(hist[1:], key=lambda p: p["val/loss"])["step"]
    # where the wall time went, as a classifier's run.json says it: the loss scoring and the generations apart
    timing = run["timing_s"]
    assert set(timing) == {"load_model", "tokenize", "evaluate", "generate", "train_steps", "save"}
    assert all(v > 0 for v in timing.values())
    assert timing["train_steps"] == pytest.approx(run["examples_seen"] / run["examples_per_s"], abs=1e-3)  # ms
    assert sum(timing.values()) <= run["wall_s"] + run["setup_s"]


def test_prompt_set_generations_are_scored_per_group_and_recorded_per_eval_point(sft_run):
    hist = _history(sft_run)
    for p in hist:
        for group in ("familiar", "novel"):
            for metric in ("exact_match", "chrf", "len_ratio", "repetition", "empty", "capped"):
                assert f"val/prompt_{group}_{metric}" in p
            assert 0.0 <= p[f"val/prompt_{group}_chrf"] <= 1.0
            assert p[f"val/prompt_{group}_capped"] in (0.0, 0.5, 1.0)  # 2 prompts per group cut at the cap or not
    rows = [json.loads(x) for x in (sft_run / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * len(hist)  # 4 prompts at each of the 4 eval points
    assert [r["step"] for r in rows[::4]] == [0, 4, 8, 12]
    assert {r["group"] for r in rows} == {"familiar", "novel"}
    assert all(set(r) == {"step", "group", "prompt", "reference", "output"} for r in rows)
    assert {r["reference"] for r in rows} <= set(ANSWERS.values())
    # the untrained model's outputs are its greedy tokens: at most max_new_tokens words (word-level vocab)
    assert all(len(r["output"].split()) <= 6 for r in rows)
    run = json.loads((sft_run / "run.json").read_text())
    assert run["prompt_set"]["rows"] == {"familiar": 2, "novel": 2}


KILLED_BETWEEN_WRITES = """
import os, sys
import loratune
from loratune.store import RunStore
from loratune.cli import main

writes = []

def killed_at_the_second_write_of(step, name):
    original = getattr(RunStore, name)

    def write(self, arg):
        if (arg if isinstance(arg, dict) else arg[0])["step"] == step:
            writes.append(name)
            if len(writes) == 2:
                os._exit(137)  # kill -9 between the two writes of one evaluation point
        return original(self, arg)

    setattr(RunStore, name, write)

killed_at_the_second_write_of(8, "append_history")
killed_at_the_second_write_of(8, "append_generations")
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_killed_between_an_eval_points_writes_has_no_outputs_past_its_history(lm, sft_data, tmp_path, capsys):
    """generations.jsonl was appended before the history point: a run killed between the two writes had outputs at
    step 8 while its history ended at step 4, and `loratune show` printed step 8's outputs for a record ending at
    step 4."""
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_WRITES, "train", "-q",
                           *sft_overrides(lm, sft_data, out, prompt_set=sft_data / "prompt_set.jsonl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 137, proc.stdout + proc.stderr
    history = [p["step"] for p in _history(out)]
    generated = sorted({json.loads(x)["step"] for x in (out / "generations.jsonl").read_text().splitlines()})
    assert set(generated) <= set(history), (generated, history)
    assert (history, generated) == ([0, 4, 8], [0, 4])
    capsys.readouterr()
    assert cli.main(["show", str(out)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "at step 4:" in shown and "step 8:" not in shown


def test_diagnose_reads_the_sft_run(sft_run, capsys):
    assert cli.main(["diagnose", str(sft_run)]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_the_saved_adapter_loads_with_plain_peft_and_generates(sft_run, lm):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = sft_run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and not config.get("modules_to_save")
    tok = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm), adapter).eval()
    trained_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b)  # B starts at zero: these were trained
    ids = tok("### User:\nlost my card\n\n### Assistant:\n", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


@pytest.mark.parametrize("template", ["auto", "plain"])
def test_the_adapter_card_recipe_runs_as_written(template, sft_data, tmp_path):
    """The card's code failed as written: apply_chat_template(return_tensors='pt') gives a BatchEncoding in
    transformers 5 (generate wants a tensor), and a run on the plain template was told to use a chat template."""
    from sft_support import save_tiny_llama_lm
    from support import card_recipe

    lm = save_tiny_llama_lm(tmp_path / "lm", chat_template=True)
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out, chat_template=template)]) == 0
    card = (out / "adapter" / "README.md").read_text()
    mode = "chat" if template == "auto" else "plain"
    assert ("apply_chat_template" in card) == (template == "auto") and f"the {mode} template" in card
    printed: list = []
    card_recipe(out, {"print": printed.append})  # its last line prints the generated text
    assert len(printed) == 1 and isinstance(printed[0], str)


def test_adapter_round_trip_gives_the_same_logits_and_generations(lm, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config(None, sft_overrides(lm, tmp_path, tmp_path / "run", target_modules="[attn, ffn]"))
    torch.manual_seed(0)
    model, _ = apply_adapter(load_causal_lm(cfg.model), cfg.adapter, task="causal-lm")
    with torch.no_grad():  # a non-zero update, as after training
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    tok = load_tokenizer(cfg.model)
    prompts = encode_prompts(tok, Renderer.for_tokenizer(tok, "auto"),
                             [Example((Turn("user", "lost my card"),), ""), Example((Turn("user", "hello"),), "")], 32)
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    outputs = generate(model, tok, prompts, 5, torch.device("cpu"))
    store = RunStore(tmp_path / "run")
    save_lm(model, tok, cfg, store)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm), store.adapter_dir).eval()
    with torch.no_grad():
        after = reloaded(input_ids=ids).logits
    base = AutoModelForCausalLM.from_pretrained(lm).eval()
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, before, atol=1e-3)  # the adapter changes them
    assert torch.allclose(before, after, atol=1e-5)
    assert generate(reloaded, tok, prompts, 5, torch.device("cpu")) == outputs
    assert "PeftModel.from_pretrained" in (store.adapter_dir / "README.md").read_text()


def test_the_saved_model_stops_where_the_run_generates_its_answers_to(tmp_path):
    """A base whose generation config lists only '</s>' while the chat template ends a turn with '<|end|>' (the run
    learns '<|end|>', no '</s>' after it): the card's generate(ids, max_new_tokens=64) ran 64 tokens past the answer.
    The saved generation config and the card's generate both stop at the run's stop ids (as TRL updates eos_token_id)."""
    from transformers import GenerationConfig

    from loratune.sft_data import stop_token_ids

    from sft_support import CHAT_TEMPLATE, make_tokenizer

    tok = make_tokenizer(chat_template=False)  # EOS '</s>'
    tok.chat_template = CHAT_TEMPLATE  # turns end '<|end|>'
    lm = save_tiny_llama_lm(tmp_path / "lm", tokenizer=tok)
    cfg = load_config(None, sft_overrides(lm, tmp_path, tmp_path / "run"))
    model, _ = apply_adapter(load_causal_lm(cfg.model), cfg.adapter, task="causal-lm")
    tok = load_tokenizer(cfg.model)
    stops = stop_token_ids(tok, Renderer.for_tokenizer(tok, "auto"))
    assert stops == [tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<|end|>")]
    store = RunStore(tmp_path / "run")
    save_lm(model, tok, cfg, store)
    assert GenerationConfig.from_pretrained(store.adapter_dir).eos_token_id == stops
    card = (store.adapter_dir / "README.md").read_text()
    assert "stop = tokenizer.convert_tokens_to_ids(['</s>', '<|end|>'])" in card
    assert "model.generate(ids, max_new_tokens=64, eos_token_id=stop)" in card


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_base_with_sampling_flags_and_no_do_sample_still_saves(method, tmp_path):
    """A base whose generation_config.json sets temperature 0.6 and top_p 0.9 without do_sample (early Llama-2-chat):
    saving raised transformers' strict check once eos_token_id had changed (ValueError: the finished run 'failed', no
    model saved). The model is saved, the base's flags kept as published, eos_token_id the run's stop ids."""
    from transformers import GenerationConfig

    from sft_support import CHAT_TEMPLATE, make_tokenizer

    tok = make_tokenizer(chat_template=False)  # EOS '</s>'
    tok.chat_template = CHAT_TEMPLATE  # turns end '<|end|>'
    lm = save_tiny_llama_lm(tmp_path / "lm", tokenizer=tok)
    published = Path(lm) / "generation_config.json"
    published.write_text(json.dumps({**json.loads(published.read_text()), "temperature": 0.6, "top_p": 0.9}))
    cfg = load_config(None, sft_overrides(lm, tmp_path, tmp_path / "run", method=method))
    model = load_causal_lm(cfg.model)
    if method == "lora":
        model, _ = apply_adapter(model, cfg.adapter, task="causal-lm")
    tok = load_tokenizer(cfg.model)
    store = RunStore(tmp_path / "run")
    save_lm(model, tok, cfg, store)
    saved = json.loads((store.adapter_dir / "generation_config.json").read_text())
    stops = [tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<|end|>")]
    assert (saved["temperature"], saved["top_p"], saved.get("do_sample")) == (0.6, 0.9, None)
    assert saved["eos_token_id"] == stops
    assert GenerationConfig.from_pretrained(store.adapter_dir).eos_token_id == stops
    assert (store.adapter_dir / ("adapter_config.json" if method == "lora" else "config.json")).is_file()


def test_the_saved_stop_ids_add_the_runs_to_the_bases_as_its_generations_stop(tmp_path):
    """A base whose generation config lists two EOS ids (['</s>', '<|end|>'], as Llama-3 instruct lists three) and a
    tokenizer whose EOS is '<|end|>': the saved eos_token_id and the card's stop line were '<|end|>' alone (the run's
    stop ids replaced the base's) while the run's generations stopped at both. One set (run_stop_ids) for all three:
    the base's ids, then the tokenizer's EOS and the template's end of turn."""
    from loratune.sft import saved_model_card
    from loratune.sft_data import stop_token_ids

    from sft_support import make_tokenizer

    tok = make_tokenizer()  # EOS '<|end|>'
    lm = save_tiny_llama_lm(tmp_path / "lm", tokenizer=tok)
    base = [tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<|end|>")]
    published = Path(lm) / "generation_config.json"
    published.write_text(json.dumps({**json.loads(published.read_text()), "eos_token_id": base}))
    cfg = load_config(None, sft_overrides(lm, tmp_path, tmp_path / "run"))
    model, _ = apply_adapter(load_causal_lm(cfg.model), cfg.adapter, task="causal-lm")
    tok = load_tokenizer(cfg.model)
    store = RunStore(tmp_path / "run")
    save_lm(model, tok, cfg, store)
    assert json.loads((store.adapter_dir / "generation_config.json").read_text())["eos_token_id"] == base
    line = "stop = tokenizer.convert_tokens_to_ids(['</s>', '<|end|>'])"
    assert line in (store.adapter_dir / "README.md").read_text()
    assert line in saved_model_card(store.adapter_dir, cfg)  # a tune study's exported pick: the same card

    from loratune.sft import run_stop_ids  # what generate_capped stops at

    assert run_stop_ids(model.generation_config.eos_token_id, tok,
                        stop_token_ids(tok, Renderer.for_tokenizer(tok, "auto"))) == base


def test_saving_an_adapter_again_says_nothing_of_its_model_card(lm, tmp_path):
    # `train -q` on causal-lm printed "Repo card metadata block was not found. Setting CardData to empty." at every
    # best-model save after the first (peft re-reads the card loratune wrote): the hub logs on its own logger
    import logging

    cfg = load_config(None, sft_overrides(lm, tmp_path, tmp_path / "run"))
    model, _ = apply_adapter(load_causal_lm(cfg.model), cfg.adapter, task="causal-lm")
    tok = load_tokenizer(cfg.model)
    store = RunStore(tmp_path / "run")
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    hub = logging.getLogger("huggingface_hub")
    keep, level = Keep(logging.WARNING), hub.level
    hub.addHandler(keep)
    try:
        for _ in range(2):
            save_lm(model, tok, cfg, store)
        assert hub.level == level  # restored
    finally:
        hub.removeHandler(keep)
    assert not [m for m in seen if "Repo card" in m], seen


def test_the_output_projection_runs_on_the_scored_positions_only_with_the_full_forwards_numbers(lm, tmp_path,
                                                                                               monkeypatch):
    """scored_logits asks the model for the logits of completion positions only (transformers' logits_to_keep
    mask): the lm_head sees those rows and no other, and the loss, token count, hits and gradients are the ones
    the whole [batch, tokens, vocab] logits give."""
    from loratune.sft import IGNORE, projects_scored_only, scored_logits, token_stats

    cfg = load_config(None, sft_overrides(lm, tmp_path, tmp_path / "run", target_modules="[attn, ffn]"))
    torch.manual_seed(0)
    model, _ = apply_adapter(load_causal_lm(cfg.model), cfg.adapter, task="causal-lm")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.eval()
    ids = torch.randint(3, 40, (3, 9))
    mask = torch.ones_like(ids)
    mask[2, 6:] = 0  # a shorter row, right-padded
    labels = torch.full_like(ids, IGNORE)
    labels[0, 5:] = ids[0, 5:]  # prompts of different lengths, then the completion
    labels[1, 2:] = ids[1, 2:]
    labels[2, 4:6] = ids[2, 4:6]
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    assert projects_scored_only(model)
    seen = []
    head = model.get_base_model().lm_head
    hook = head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))

    def stats(fn):
        model.zero_grad(set_to_none=True)
        loss, n, hits = fn()
        loss.backward()
        return loss.detach(), n, hits, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    scored = stats(lambda: token_stats(*scored_logits(model, batch)))
    whole = stats(lambda: token_stats(model(input_ids=ids, attention_mask=mask).logits[:, :-1], labels[:, 1:]))
    hook.remove()
    # [n, hidden]: the 4 + 7 + 2 completion tokens' predecessors, no other position
    assert seen[0] == (4 + 7 + 2, head.in_features) and scored[1] == whole[1] == 13
    assert seen[1][:2] == (3, 9)  # the whole forward projects every position
    assert scored[2] == whole[2]
    torch.testing.assert_close(scored[0], whole[0], rtol=1e-5, atol=1e-5)
    assert set(scored[3]) == set(whole[3]) and scored[3]
    for k in whole[3]:
        torch.testing.assert_close(scored[3][k], whole[3][k], rtol=1e-4, atol=1e-6)
    # a model that cannot take the mask: every position projected, the unscored ones dropped, the same numbers
    import loratune.sft as S

    monkeypatch.setattr(S, "projects_scored_only", lambda m: False)
    dropped = stats(lambda: token_stats(*scored_logits(model, batch)))
    assert dropped[1:3] == scored[1:3]
    torch.testing.assert_close(dropped[0], whole[0], rtol=1e-5, atol=1e-5)


def test_full_finetuning_saves_a_model_transformers_loads(lm, sft_data, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out, method="full", learning_rate=1e-3,
                                                   max_steps=4, eval_steps=2)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["params"]["trainable"] == run["params"]["total"]
    model = AutoModelForCausalLM.from_pretrained(out / "adapter")
    base = AutoModelForCausalLM.from_pretrained(lm)
    changed = [n for (n, p), (_, q) in zip(model.named_parameters(), base.named_parameters()) if not torch.equal(p, q)]
    assert len(changed) == len(list(base.parameters()))  # every weight moved


def test_chat_rows_train_through_the_tokenizer_chat_template(tmp_path):
    model = save_tiny_llama_lm(tmp_path / "chat-model", chat_template=True)
    chats = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": r["prompt"]},
                           {"role": "assistant", "content": r["completion"]}]} for r in make_sft_rows(4, seed=5)]
    write_jsonl(tmp_path / "chats.jsonl", chats)
    out = tmp_path / "run"
    cfg = sft_overrides(model, tmp_path / "none", out, max_steps=2, eval_steps=1)
    cfg = [c for c in cfg if not c.startswith("dataset_name=")] + [f"train_file={tmp_path / 'chats.jsonl'}"]
    assert cli.main(["train", "-q", *cfg]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["template"] == "chat" and run["rows"]["train"] + run["rows"]["val"] == 16
    assert "carved a random 12% (2 of 16 rows)" in run["data_notes"][0]  # the share carved, 10% asked


def test_a_multi_turn_run_records_what_its_loss_covers_and_an_older_run_is_evaluated_as_it_was_trained(tmp_path,
                                                                                                        capsys):
    """`evaluate` re-encoded every run with today's rule (every assistant turn), so a multi-turn run recorded before
    it (its last turns learnt and scored) was scored over other tokens than it recorded. run.json says what the
    loss covers; a run without the key is scored on its chats' last turns."""
    from loratune.sft_data import EVERY_TURN, LOSS_COVERS_KEY, encode_sft, load_sft_dataset
    from transformers import AutoTokenizer

    model = save_tiny_llama_lm(tmp_path / "chat-model", chat_template=True)
    rows = make_sft_rows(4, seed=5)
    chats = [{"messages": [{"role": "user", "content": a["prompt"]}, {"role": "assistant", "content": a["completion"]},
                           {"role": "user", "content": b["prompt"]}, {"role": "assistant", "content": b["completion"]}]}
             for a, b in zip(rows, rows[1:] + rows[:1])]
    write_jsonl(tmp_path / "chats.jsonl", chats)
    out = tmp_path / "run"
    cfg = sft_overrides(model, tmp_path / "none", out, max_steps=2, eval_steps=1, max_length=64)
    cfg = [c for c in cfg if not c.startswith("dataset_name=")] + [f"train_file={tmp_path / 'chats.jsonl'}"]
    assert cli.main(["train", "-q", *cfg]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run[LOSS_COVERS_KEY] == EVERY_TURN
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--split", "validation", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert every["val/tokens"] == run["best"]["val/tokens"]
    del run[LOSS_COVERS_KEY]  # a run recorded before the key
    (out / "run.json").write_text(json.dumps(run))
    assert cli.main(["evaluate", str(out), "--split", "validation", "--json"]) == 0
    last = json.loads(capsys.readouterr().out)
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    val = load_sft_dataset(load_config(None, cfg).data, seed=run.get("data_seed", 42)).validation.examples
    enc = encode_sft(tok, Renderer.for_tokenizer(tok, "auto"), val, 64, learn_earlier=False)
    assert last["val/tokens"] == enc.scored(range(len(enc))) < every["val/tokens"]


def _refused_train(lm, tmp_path, capsys) -> str:
    """train task=causal-lm on tmp_path/train.jsonl: refused (exit 2, no traceback, no run folder made); its stderr."""
    code = cli.main(["train", "-q", "task=causal-lm", f"name_or_path={lm}", f"train_file={tmp_path / 'train.jsonl'}",
                     f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    return err


def test_classification_data_under_causal_lm_is_a_user_error_naming_the_columns(lm, tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "lost my card", "label": "card_lost"}] * 4)
    assert "nor a chat column ('messages') (columns: text, label)" in _refused_train(lm, tmp_path, capsys)


def test_a_trl_completion_of_several_turns_is_a_user_error_not_a_glued_answer(lm, tmp_path, capsys):
    user = [{"role": "user", "content": "lost my card"}]
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": user, "completion": [{"role": "assistant", "content": "ok"}]}] * 3
                + [{"prompt": user, "completion": [{"role": "assistant", "content": "your card is blocked"},
                                                   {"role": "user", "content": "thanks"}]}])
    assert "row 4: column 'completion' has the turns (assistant, user)" in _refused_train(lm, tmp_path, capsys)


@pytest.mark.parametrize("dry", [False, True])
def test_a_tokenizer_without_eos_is_refused_before_training_learns_endless_completions(dry, lm, intent_data,
                                                                                       tmp_path, capsys):
    """No eos_token, no chat template: completions were learnt with no end, every generated label ran on past its
    label ('balance transfer is sent ...') and val/macro_f1 stayed 0 with exit 0; now exit 2 naming the fix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "lm-noeos"
    tok = AutoTokenizer.from_pretrained(lm)
    tok.eos_token = None
    tok.save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(lm).save_pretrained(folder)
    out = tmp_path / "run"
    args = sft_overrides(str(folder), intent_data, out, label_format="generate", max_steps=2, eval_steps=1)
    assert cli.main(["train", "-q", *(["--dry-run"] if dry else []), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "has no eos_token and the 'plain' template writes no end-of-turn mark" in err
    assert "fix: set eos_token in the tokenizer's tokenizer_config.json" in err and "Traceback" not in err
    assert not out.exists()


def test_dry_run_counts_the_adapter_without_training(lm, sft_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--dry-run", *sft_overrides(lm, sft_data, out)]) == 0
    text = capsys.readouterr().out
    assert "task: causal-lm" in text and "planned: 12 optimizer steps" in text
    assert not out.exists()


def test_bf16_autocast_trains_with_the_lm_head_in_float32(lm, sft_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loratune import precision as precision_mod
    from loratune.generation import load_prompt_set
    from loratune.sft import LM_HEAD_NAMES

    out = tmp_path / "run"
    prompt_set = sft_data / "prompt_set.jsonl"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out, precision="bf16", max_steps=2,
                                                   eval_steps=1, prompt_set=prompt_set)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["precision"]["dtype"] == "bfloat16" and run["status"] == "completed"
    assert run["precision"]["lora_inputs_as_is"] > 0  # the adapters take autocast's bf16 inputs as they come
    # the frozen linear layers are held in bf16: 2 layers x (q, k, v, o, gate, up, down); the lm_head stays float32
    assert run["precision"]["frozen_linear_bf16"] == 14
    assert all(math.isfinite(p["val/loss"]) for p in _history(out))
    # the run generated under autocast from bf16 weights; the saved adapter on the float32 base, under autocast as
    # `loratune evaluate` runs it, writes the same outputs (a bf16 weight is what autocast's cast of it gives)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(lm), out / "adapter").eval()
    precision_mod.head_in_fp32(model, LM_HEAD_NAMES, "cpu")
    tok = load_tokenizer(load_config(out / "config.yaml").model)
    items = load_prompt_set(prompt_set)
    prompts = encode_prompts(tok, Renderer.for_tokenizer(tok, "auto"),
                             [Example((Turn("user", it.prompt),), it.reference) for it in items], 32)
    saved = [r["output"] for r in map(json.loads, (out / "generations.jsonl").read_text().splitlines())
             if r["step"] == run["adapter_step"]]
    assert generate(model, tok, prompts, 6, torch.device("cpu"), autocast=True) == saved


def test_the_default_schedule_charges_generation_to_the_evaluation_budget(lm, sft_data, tmp_path, capsys):
    from loratune.features import is_eval_point
    from loratune.sft import DECODE_STEP_TOKENS
    from loratune.train import plan_steps

    out = tmp_path / "run"
    args = [a for a in sft_overrides(lm, sft_data, out, prompt_set=sft_data / "prompt_set.jsonl", max_steps=40,
                                     max_new_tokens=4, max_eval_share=0.25) if not a.startswith("eval_steps=")]
    assert cli.main(["train", "--dry-run", *args]) == 0
    planned = capsys.readouterr().out
    assert cli.main(["train", "-q", *args]) == 0
    run = json.loads((out / "run.json").read_text())
    ev = run["evaluation"]
    assert ev["budget_rows"] == 0.25 * 3 * 40 * 8 and ev["decode_step_tokens"] == DECODE_STEP_TOKENS
    # step 0: val's tokens and the 4 prompts' tokens, and one batch of 4 decode steps, in mean training rows
    tokens_per_row = run["tokens"]["train"] / run["rows"]["train"]
    assert ev["rows_step0"] > (run["tokens"]["val"] + 4 * DECODE_STEP_TOKENS) / tokens_per_row
    assert ev["rows_per_point"] > ev["rows_step0"] + 30  # + the train subsample (32 rows)
    hist = _history(out)
    evals = [p for p in hist if is_eval_point(p)]
    points = len(evals) - 1  # after step 0; the last step may fall between two points of the grid (+1)
    assert points >= 2 and ev["rows_step0"] + (points - 1) * ev["rows_per_point"] <= ev["budget_rows"]
    # counting a generated prompt as one scored row would have planned more points than the budget holds
    cfg = load_config(out / "config.yaml")
    assert plan_steps(cfg, 32, 8 + 32 + 4, 8 + 4)[1] < run["eval_every"] == evals[1]["step"]
    # the train loss keeps about the density of evals_per_run (10) in train-only points between them: 40 // 10 = 4
    # steps, at least TRAIN_LOG_MIN_STEPS (5), counted from the last history line
    train_only = [p for p in hist if not is_eval_point(p)]
    steps = [p["step"] for p in hist]
    assert train_only and all(b - a >= 5 for a, b in zip(steps, steps[1:]) if b in {p["step"] for p in train_only})
    assert all(b - a <= 5 for a, b in zip(steps, steps[1:]))  # a line at least every 5 steps
    assert all(p["train/loss"] > 0 and not any(k.startswith("val/") for k in p) for p in train_only)
    # the dry run plans what the run did
    assert f"evaluation every {run['eval_every']} steps" in " ".join(planned.split())


def test_between_dear_full_points_the_val_loss_alone_keeps_the_curve(lm, sft_data, tmp_path, capsys):
    """Generation makes a full point dear; the budget it leaves pays for val-loss-only points between full ones
    (train.loss_points_every): the curve the diagnosis reads, and models the run may keep; nothing generated."""
    from loratune.features import is_eval_point

    out = tmp_path / "run"
    # a constant lr of 1.0: the val loss bottoms out between two full points (step 24 on this data)
    args = [a for a in sft_overrides(lm, sft_data, out, prompt_set=sft_data / "prompt_set.jsonl", max_steps=40,
                                     max_new_tokens=6, max_eval_share=0.25, learning_rate=1.0,
                                     lr_scheduler_type="constant", warmup_ratio=0) if not a.startswith("eval_steps=")]
    assert cli.main(["train", "--dry-run", *args]) == 0
    planned = " ".join(capsys.readouterr().out.split())
    assert cli.main(["train", "-q", *args]) == 0
    assert "curves, the prompt set's outputs" in " ".join(capsys.readouterr().out.split())  # what report shows
    run = json.loads((out / "run.json").read_text())
    ev, every = run["evaluation"], run["evaluation"]["loss_every"]
    assert (run["eval_every"], every) == (20, 8)
    assert f"evaluation every 20 steps, the val loss alone every {every}" in planned  # the dry run plans the run
    hist = _history(out)
    full = [p["step"] for p in hist if "val/prompt_familiar_chrf" in p]
    loss_only = [p for p in hist if is_eval_point(p) and "val/prompt_familiar_chrf" not in p]
    assert full == [0, 20, 40] and [p["step"] for p in loss_only] == [8, 16, 24, 32]
    assert len(hist) == 7  # no train-only lines: the loss points are dense enough
    for p in loss_only:  # val scored, the train window logged; no train subsample, nothing generated
        assert p["val/loss"] > 0 and 0 <= p["val/token_accuracy"] <= 1 and p["train/loss"] > 0
        assert not any(k.startswith("train_eval/") or k.startswith("val/prompt_") for k in p)
    generated = [json.loads(x)["step"] for x in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted(set(generated)) == full
    # within the budget: step 0, two full points and four loss points
    assert ev["rows_step0"] + 2 * ev["rows_per_point"] + 4 * ev["rows_per_loss_point"] <= ev["budget_rows"]
    assert ev["rows_per_loss_point"] < ev["rows_per_point"] / 4
    # the kept model is the lowest val loss among the trained points, here a loss-only one: scored again, the
    # saved adapter gives that point's val loss
    trained = [p for p in hist if is_eval_point(p) and p["step"] > 0]
    assert run["adapter_step"] == min(trained, key=lambda p: p["val/loss"])["step"]
    assert run["adapter_step"] in {p["step"] for p in loss_only}
    assert run["best"]["step"] == run["adapter_step"] and run["final"]["step"] == 40
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--split", "validation", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["val/loss"] == pytest.approx(run["best"]["val/loss"], rel=1e-4)
    # the mixed points read and render: the diagnosis counts every point with a val loss
    from loratune.api import diagnose

    assert diagnose(out).features["n_eval_points"] == 7
    assert cli.main(["diagnose", str(out)]) == 0
    assert cli.main(["report", str(out)]) == 0 and 'id="prompts"' in (out / "report.html").read_text()
    # the curves mark the saved model's step, not the token accuracy's best; the headline names what picked it
    from loratune.report.model import build_run_report

    report = build_run_report(out)
    assert report.objective == "val/loss" and {c.best_step for c in report.curves} == {run["adapter_step"]}
    assert '>best val loss</div><div class="v">' + f"{run['best']['val/loss']:.3f}<" in (out / "report.html").read_text()
    capsys.readouterr()
    assert cli.main(["show", str(out)]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"saved model: best val/loss {run['best']['val/loss']:.3f} at step {run['adapter_step']}" in shown
    assert "classes" not in shown.split("saved model")[0]  # a causal LM has no classes to count
    assert "prompt set (generations.jsonl)" in shown and "at step 40: familiar chrf" in shown
    assert "per-class recall" not in shown


def test_predict_on_an_sft_run_says_how_to_use_its_adapter(sft_run, capsys):
    assert cli.main(["predict", str(sft_run), "lost my card"]) == 2
    err = capsys.readouterr().err
    assert "is a causal-lm (SFT) run" in err and "model.generate" in err and "Traceback" not in err


def test_evaluate_scores_an_sft_run_as_its_evaluation_points_do(sft_run, capsys):
    assert cli.main(["evaluate", str(sft_run), "--split", "validation", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    run = json.loads((sft_run / "run.json").read_text())
    best = run["best"]  # the saved model is the best point: scoring it again gives the same numbers
    assert scores["val/loss"] == pytest.approx(best["val/loss"], rel=1e-4)
    assert scores["val/token_accuracy"] == pytest.approx(best["val/token_accuracy"])
    assert run["eval"]["validation"]["val/tokens"] == best["val/tokens"]
    # rows scored, as a classifier's and a generate run's evaluate give them (it had none: loss, perplexity, token
    # accuracy and tokens only), and the training points record them too, with what they are worth to the token
    # accuracy (val/n_effective: at most the rows), which diagnose's noise bound reads. val/n is the rows evaluated,
    # as rows.val counts them (docs/run-record.md), every one scored on a completion token
    assert scores["val/n"] == run["eval"]["validation"]["val/n"] == run["rows"]["val"] == 8 == best["val/n"]
    assert all(p["val/n"] == 8 and 1 <= p["val/n_effective"] <= 8 for p in _history(sft_run) if "val/loss" in p)
    assert scores["val/n_effective"] == pytest.approx(best["val/n_effective"])
    # the prompt set too (it was not scored, and tune's pick of an SFT study fell back to the test loss): the same
    # prompts, max_new_tokens and greedy decoding give the scores the saved step recorded, every one of them
    saved = next(p for p in _history(sft_run) if p["step"] == run["adapter_step"])
    prompt_keys = {k for k in saved if k.startswith("val/prompt_")}
    assert len(prompt_keys) == 2 * 7 and {k for k in scores if k.startswith("val/prompt_")} == prompt_keys
    for k in sorted(prompt_keys):
        assert scores[k] == pytest.approx(saved[k]), k
        assert run["eval"]["validation"][k] == pytest.approx(saved[k]), k
    assert cli.main(["evaluate", str(sft_run), "--split", "validation"]) == 0
    assert f"val/prompt_novel_chrf: {saved['val/prompt_novel_chrf']:.4f}" in capsys.readouterr().out


def test_generated_labels_are_parsed_and_scored_per_class(lm, intent_data, tmp_path):
    out = tmp_path / "run"
    args = [a for a in sft_overrides(lm, intent_data, out, label_format="generate", max_steps=30, eval_steps=10,
                                     learning_rate=2e-2, target_modules="[attn, ffn]", r=8, lora_alpha=16)
            if not a.startswith("max_new_tokens=")]
    assert cli.main(["train", "-q", *args]) == 0
    run = json.loads((out / "run.json").read_text())
    assert (run["task"], run["label_format"], run["objective"]) == ("causal-lm", "generate", "val/macro_f1")
    assert run["labels"] == ["balance", "card_lost", "pin", "transfer"]
    hist = _history(out)
    for p in hist:
        assert p["val/n"] == 20 and "val/recall/card_lost" in p and "val/loss" in p
        assert p["val/unknown_rate"] == pytest.approx(sum(u["count"] for u in p["val/unknown_outputs"]) / 20)
    assert hist[0]["val/unknown_rate"] > 0.5  # the untrained model writes words, not labels
    best = max(hist[1:], key=lambda p: p["val/macro_f1"])
    assert best["val/unknown_rate"] < hist[0]["val/unknown_rate"] and best["val/macro_f1"] > hist[0]["val/macro_f1"]
    assert run["adapter_step"] == best["step"]
    confusion = json.loads((out / "confusion.json").read_text())
    assert confusion["step"] == best["step"]
    diag = sum(confusion["matrix"][i][i] for i in range(4))
    assert diag == round(best["val/accuracy"] * 20)
    assert sum(map(sum, confusion["matrix"])) == round((1 - best["val/unknown_rate"]) * 20)


def test_generated_labels_are_read_after_the_think_block_a_qwen3_template_writes(intent_data, tmp_path, capsys):
    """With Qwen3's chat template (an empty '<think>\\n\\n</think>\\n\\n' before the last assistant turn's content) a
    generative classifier scored macro-F1 0 at every point while it learnt (val loss 4.9 -> 0.6): generation got the
    label's tokens + 2 and ended inside the think block, whose first line was read as the label. The block is
    generated on top of the label's budget and the label read after it, in training, `evaluate` and the prompt set."""
    lm = save_tiny_llama_lm(tmp_path / "lm", tokenizer=make_chatml_tokenizer(think=True))
    val = [json.loads(x) for x in (intent_data / "validation.jsonl").read_text().splitlines()]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": r["text"], "reference": r["label"],
                                                         "group": "familiar"} for r in val[:4]])
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, intent_data, out, label_format="generate", max_steps=30,
                                                   eval_steps=10, learning_rate=2e-2, target_modules="[attn, ffn]",
                                                   r=8, lora_alpha=16, prompt_set=prompts, max_new_tokens=2)]) == 0
    hist = _history(out)
    assert hist[0]["val/unknown_rate"] > 0.5 and hist[-1]["val/loss"] < hist[0]["val/loss"] / 2
    best = max(hist[1:], key=lambda p: p["val/macro_f1"])
    assert best["val/unknown_rate"] < 0.5 and best["val/macro_f1"] > 0.2  # the code before: 1.0 and 0.0 throughout
    labels = {"balance", "card_lost", "pin", "transfer"}
    last = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()][-4:]
    assert all(g["output"] in labels for g in last)  # the answer after the think block, in its 2 tokens
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--split", "validation", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "run.json").read_text())["best"]
    assert scores["val/macro_f1"] == pytest.approx(saved["val/macro_f1"]) and scores["val/macro_f1"] > 0.2


def _generate_run_with_refund_in_test(lm, tmp_path, train_rows, val_rows):
    """A one-step generated-label run whose test split holds 2 rows of a label never trained on ('refund')."""
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", train_rows)
    write_jsonl(data / "validation.jsonl", val_rows)
    test = make_rows(1, seed=3)
    for r in test[:2]:
        r["label"] = "refund"
    write_jsonl(data / "test.jsonl", test)
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, data, out, label_format="generate", max_steps=1,
                                                   eval_steps=1)]) == 0
    return out


def test_evaluate_names_test_labels_a_generative_run_never_trained_on(lm, tmp_path, capsys):
    """A generated-label run's test split with a label not in train: its rows were scored as errors silently (no
    note, no test/unseen_labels); now said and recorded as the classifier's evaluation does."""
    out = _generate_run_with_refund_in_test(lm, tmp_path, make_rows(3, seed=1), make_rows(1, seed=2))
    capsys.readouterr()
    assert cli.main(["evaluate", str(out), "--split", "test"]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "note: 1 label(s) the run never trained on, their rows scored as errors: refund (2 row(s))" in said
    assert json.loads((out / "run.json").read_text())["eval"]["test"]["test/unseen_labels"] == {"refund": 2}
    assert cli.main(["evaluate", str(out), "--split", "validation", "--json"]) == 0
    assert "val/unseen_labels" not in json.loads(capsys.readouterr().out)  # every val label was trained on


def test_the_train_summary_show_and_report_say_the_share_of_truncated_rows(lm, tmp_path, capsys):
    """run.json counted the rows cut at max_length, but no summary said so; the train summary and `show` (the report
    model's notes, which `report` renders too) now give each split's share, from the recorded counts."""
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in (("train", 4, 1), ("validation", 1, 2)):
        rows = make_sft_rows(n, seed=seed)
        for r in rows[::2]:
            r["prompt"] = " ".join([r["prompt"]] * 6)
        write_jsonl(data / f"{name}.jsonl", rows)
    out = tmp_path / "run"
    assert cli.main(["train", *sft_overrides(lm, data, out, max_steps=1, eval_steps=1, max_length=24)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["truncated"] == {"train": 8, "val": 2, "max_length": 24} and run["rows"]["train"] == 16
    said = " ".join(capsys.readouterr().out.split())
    line = "note: 8 of 16 train rows (50%) and 2 of 4 val rows (50%) longer than max_length=24 tokens were truncated"
    assert line in said
    assert cli.main(["show", str(out)]) == 0
    assert line in " ".join(capsys.readouterr().out.split())


def test_assess_proposes_an_sft_start_config_from_the_rendered_token_lengths(lm, sft_data, capsys):
    code = cli.main(["assess", "task=causal-lm", f"name_or_path={lm}", f"dataset_name={sft_data}",
                     "max_length=8", "--json"])
    a = json.loads(capsys.readouterr().out)
    assert code == 0 and a["task"] == "causal-lm" and a["facts"]["train_rows"] == 32
    rules = {c["rule"]: c for c in a["recommendation"]["choices"]}
    assert {"start-epochs-sft", "start-dropout-by-rows-sft", "start-rank-by-data", "start-max-length-p99"} <= set(rules)
    # every row is longer than 8 tokens: the warning, and a max_length that fits 99% of the rows
    assert a["facts"]["truncated_share_at_max_length"] == 1.0
    assert [f["id"] for f in a["findings"]] == ["truncated-rows"]
    assert rules["start-max-length-p99"]["value"] >= a["facts"]["token_p99"]
    code = cli.main(["assess", "task=causal-lm", f"name_or_path={lm}", f"dataset_name={sft_data}"])
    out = capsys.readouterr().out
    assert code == 0 and "start with: loratune train task=causal-lm" in out and "start-epochs-sft" in out


# ---------------------------------------------------------------------------------------------
# the loop's endings: interrupted, diverged, non-finite at step 1 (each a valid record)


def _wrap_loss(monkeypatch, fn):
    import loratune.sft as S

    real, calls = S.lm_loss, {"n": 0}

    def wrapped(model, batch):
        calls["n"] += 1
        return fn(calls["n"], *real(model, batch))

    monkeypatch.setattr(S, "lm_loss", wrapped)


def test_ctrl_c_mid_run_keeps_the_saved_model_and_a_partial_record(lm, sft_data, tmp_path, monkeypatch):
    def interrupt(n, loss, tokens):
        if n == 6:
            raise KeyboardInterrupt
        return loss, tokens

    _wrap_loss(monkeypatch, interrupt)
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out)]) == 130
    run = json.loads((out / "run.json").read_text())
    assert (run["status"], run["partial"], run["adapter_step"]) == ("interrupted", True, 4)
    # the reason names the last step done, the record's steps_done (it named the step in progress, one past it)
    assert "after step 5" in run["reason"] and run["steps_done"] == 5 and [p["step"] for p in _history(out)] == [0, 4]
    assert (out / "adapter" / "adapter_config.json").is_file() and not (out / "run.lock").exists()


def test_an_exploding_loss_ends_diverged_with_exit_3(lm, sft_data, tmp_path, monkeypatch):
    _wrap_loss(monkeypatch, lambda n, loss, tokens: (loss * (1.0 if n == 1 else 100.0), tokens))
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out)]) == 3
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "diverged" and "train loss exploded" in run["reason"] and run["steps_done"] == 4
    assert run["adapter_step"] is None and not (out / "adapter").exists()


def test_a_non_finite_loss_at_step_1_saves_no_model_and_says_so(lm, sft_data, tmp_path, monkeypatch):
    _wrap_loss(monkeypatch, lambda n, loss, tokens: (loss * float("nan"), tokens))
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out)]) == 3
    run = json.loads((out / "run.json").read_text())
    assert (run["status"], run["reason"]) == ("diverged", "non-finite loss at step 1")
    assert run["saved_model"]["step"] is None and "no model saved" in run["saved_model"]["note"]


def test_equal_macro_f1_keeps_the_model_with_the_lower_val_loss(lm, intent_data, tmp_path, monkeypatch):
    import loratune.sft as S

    # no output ever names a label: macro-F1 is 0.0 at every point, so the val loss decides
    monkeypatch.setattr(S, "generate", lambda model, tok, prompts, n, device, autocast=False, stop_ids=(), prefix=():
                        ["no idea"] * len(prompts))
    out = tmp_path / "run"
    args = [a for a in sft_overrides(lm, intent_data, out, label_format="generate") if not a.startswith("max_new")]
    assert cli.main(["train", "-q", *args]) == 0
    hist = _history(out)
    assert all(p["val/macro_f1"] == 0.0 and p["val/unknown_rate"] == 1.0 for p in hist)
    run = json.loads((out / "run.json").read_text())
    assert run["adapter_step"] == min(hist[1:], key=lambda p: p["val/loss"])["step"]
    assert run["adapter_step"] != hist[1]["step"]  # a learning run: a later point has the lower val loss
    assert json.loads((out / "confusion.json").read_text())["step"] == run["adapter_step"]


def test_generated_labels_get_the_label_budget_whatever_max_new_tokens(lm, intent_data, tmp_path, monkeypatch):
    """train.max_new_tokens is the prompt set's budget: at 1 it cut 'pin reset' to 'pin' (scored as another class)
    in training's evaluations and in `evaluate`; a label is generated with label_token_cap new tokens."""
    import loratune.sft as S

    budgets = []

    def fake(model, tok, prompts, n, device, autocast=False, stop_ids=(), prefix=()):
        budgets.append(n)
        return ["no idea"] * len(prompts)

    monkeypatch.setattr(S, "generate", fake)
    out = tmp_path / "run"
    args = [a for a in sft_overrides(lm, intent_data, out, label_format="generate", max_steps=4, eval_steps=2)
            if not a.startswith("max_new")]
    assert cli.main(["train", "-q", *args, "max_new_tokens=1"]) == 0
    cap = S.label_token_cap(load_tokenizer(load_config(None, [f"name_or_path={lm}"]).model),
                            ["balance", "card_lost", "pin", "transfer"])
    assert cap > 1 and budgets == [cap] * len(_history(out))
    budgets.clear()
    assert cli.main(["evaluate", str(out), "--split", "validation", "--json"]) == 0
    assert budgets == [cap]


def test_patience_counts_a_falling_val_loss_at_a_tied_metric_as_progress(lm, intent_data, tmp_path, monkeypatch):
    """While no output names a label, macro-F1 ties at 0.0: a run whose val loss still falls is learning, and early
    stopping ended it at its third evaluation (every lr-grid trial of a generative `tune` scored 0.000)."""
    import loratune.sft as S

    monkeypatch.setattr(S, "generate", lambda model, tok, prompts, n, device, autocast=False, stop_ids=(), prefix=():
                        ["no idea"] * len(prompts))
    out = tmp_path / "run"
    args = [a for a in sft_overrides(lm, intent_data, out, label_format="generate", early_stopping_patience=2)
            if not a.startswith("max_new")]
    assert cli.main(["train", "-q", *args]) == 0
    hist = _history(out)
    run = json.loads((out / "run.json").read_text())
    losses = [p["val/loss"] for p in hist]
    # patience ran out only after 2 evaluations in a row that set no new lowest val loss
    lows = [i for i in range(1, len(losses)) if losses[i] < min(losses[:i])]
    last_progress = max(lows, default=0)
    if "early stopping" in str(run.get("reason")):
        assert len(hist) - 1 - last_progress >= 2
    else:
        assert run["steps_done"] == run["steps_planned"]
    assert len(hist) > 3  # the old rule stopped at the third evaluation whatever the loss did


def test_patience_running_out_at_the_last_planned_step_is_no_early_stop(lm, sft_data, tmp_path):
    """As the classifier loop: the evaluation that exhausts the patience is the last planned step's, so the run ended
    by its plan (reason "planned steps done"), not by early stopping."""
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out, learning_rate=1e-9, max_steps=4, eval_steps=2,
                                                   early_stopping_patience=2, early_stopping_threshold=0.5)]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["steps_done"] == run["steps_planned"] == 4 and run["reason"] == "planned steps done (4)"


# ---------------------------------------------------------------------------------------------
# the step/eval callback (train.TrainCallback): how `loratune tune` prunes and stops a causal-lm trial


class _StopAt:
    def __init__(self, eval_step=None, step=None):
        self.steps, self.evals, self.eval_step, self.step = [], [], eval_step, step

    def on_step(self, step, examples_seen):
        self.steps.append(step)
        return "enough steps" if step == self.step else None

    def on_eval(self, point, run):
        self.evals.append(point["step"])
        assert run["final"] is point and run["status"] == "running"
        return "pruned here" if point["step"] == self.eval_step else None


@pytest.mark.parametrize("where", ["eval", "step"])
def test_the_callback_sees_steps_and_evals_and_stops_the_sft_loop(where, lm, sft_data, tmp_path):
    from loratune.sft import train_sft
    from loratune.sft_data import load_sft_dataset

    cfg = load_config(None, sft_overrides(lm, sft_data, tmp_path / "run"))
    cb = _StopAt(eval_step=4) if where == "eval" else _StopAt(step=6)
    run = train_sft(cfg, load_sft_dataset(cfg.data), RunStore(tmp_path / "run"), progress=False, callback=cb)
    assert run["status"] == "interrupted" and run["partial"] is True and run["adapter_step"] == 4
    assert cb.evals == [0, 4]
    if where == "eval":
        assert (run["reason"], run["steps_done"], cb.steps) == ("pruned here", 4, [1, 2, 3, 4])
    else:
        assert (run["reason"], run["steps_done"], cb.steps) == ("enough steps", 6, [1, 2, 3, 4, 5, 6])
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


def test_a_stop_at_the_sft_loops_last_eval_point_leaves_a_completed_run(lm, sft_data, tmp_path):
    # every planned step ran: not interrupted, not partial (docs/run-record.md), whatever the callback said
    from loratune.sft import train_sft
    from loratune.sft_data import load_sft_dataset

    cfg = load_config(None, sft_overrides(lm, sft_data, tmp_path / "run"))
    planned = _StopAt()
    steps = train_sft(cfg, load_sft_dataset(cfg.data), RunStore(tmp_path / "plan"), progress=False,
                      callback=planned)["steps_done"]
    cb = _StopAt(eval_step=steps)
    run = train_sft(cfg, load_sft_dataset(cfg.data), RunStore(tmp_path / "run"), progress=False, callback=cb)
    assert (run["status"], run["partial"], run["steps_done"]) == ("completed", False, steps)
    assert run["reason"] == f"planned steps done ({steps})" and cb.evals[-1] == steps

def test_a_model_that_cannot_be_saved_leaves_a_failed_record_not_a_running_one(lm, sft_data, tmp_path, monkeypatch):
    """Saving failed for a reason other than the output location (a GGUF-loaded model once refused
    save_pretrained): the record says failed with the error, never `running` or `completed` over no model."""
    import loratune.sft as S

    def refuse(*a, **k):
        raise ValueError("The model is quantized with gguf and is not serializable")

    monkeypatch.setattr(S, "save_lm", refuse)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="not serializable"):  # an internal fault goes up, after the record
        cli.main(["train", "-q", *sft_overrides(lm, sft_data, out)])
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["partial"] is True and not (out / "run.lock").exists()
    assert run["reason"].startswith("saving the model failed: ValueError: The model is quantized with gguf")
    assert run["saved_model"]["step"] is None


def test_a_gguf_base_loses_its_quantizer_marker_so_a_full_model_saves(tmp_path):
    """transformers keeps the GGUF quantizer on a model it dequantised; save_pretrained then refuses."""
    from types import SimpleNamespace

    from loratune.models import forget_gguf_quantizer

    model = SimpleNamespace(hf_quantizer=object(), quantization_config={"quant_method": "gguf"},
                            config=SimpleNamespace(quantization_config={"quant_method": "gguf"}))
    forget_gguf_quantizer(model)
    assert model.hf_quantizer is None
    assert getattr(model, "quantization_config", None) is None and getattr(model.config, "quantization_config", None) is None


def test_an_sft_run_warm_starts_from_a_saved_adapter(sft_run, lm, sft_data, tmp_path):
    """train.init_from under causal-lm: the run starts from the saved adapter (its step-0 val loss is the saved
    model's), and its divergence reference is the un-adapted model's loss, not the saved model's low one."""
    saved_step = json.loads((sft_run / "run.json").read_text())["adapter_step"]
    saved = next(p for p in _history(sft_run) if p["step"] == saved_step)
    out = tmp_path / "warm"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out, max_steps=4, eval_steps=2,
                                                   init_from=sft_run / "adapter")]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["init_from"].startswith(f"started from {sft_run / 'adapter'}")
    assert _history(out)[0]["val/loss"] == pytest.approx(saved["val/loss"], rel=1e-4)
    # step 0 is recorded as the starting model's point, not as an untrained model's
    assert run["start"] == {"step": 0, "val/loss": _history(out)[0]["val/loss"]} and "untrained" not in run
    assert "untrained" not in run["saved_model"]["note"]
    assert _history(out)[0]["val/loss"] < _history(sft_run)[0]["val/loss"]


@pytest.mark.parametrize("template", ["auto", "plain"])
def test_the_card_recipe_builds_the_prompt_ids_training_built(template, sft_data, tmp_path):
    """With a tokenizer that adds BOS and a chat template that writes none, training put <s> before every prompt and
    the card's recipe (add_special_tokens=False) dropped it: the card's ids are now loratune's, BOS first."""
    from sft_support import make_tokenizer
    from support import card_recipe
    from transformers import AutoTokenizer

    lm = save_tiny_llama_lm(tmp_path / "lm", chat_template=True)
    make_tokenizer(chat_template=True, bos=True).save_pretrained(lm)
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *sft_overrides(lm, sft_data, out, chat_template=template, max_steps=2,
                                                   eval_steps=2)]) == 0
    scope = card_recipe(out, {"print": lambda *a: None})
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    ours = encode_prompts(tok, Renderer.for_tokenizer(tok, template), [Example((Turn("user", "..."),), "")], 32)[0]
    assert ours[0] == tok.bos_token_id and ours[1] != tok.bos_token_id  # one BOS, as training wrote it
    assert scope["ids"][0].tolist() == ours


def test_accumulation_weighs_micro_batches_by_completion_tokens_as_one_batch(lm, tmp_path):
    # 8 rows, every other answer 4x as long: accumulated micro-batches hold unequal completion-token counts. The
    # step is the per-token mean over all of them (as one batch of 8 gives), not the mean of micro-batch means
    data = tmp_path / "data"
    data.mkdir()
    rows = make_sft_rows(2, seed=1)
    for i, r in enumerate(rows):
        r["completion"] = " ".join([r["completion"]] * (1 + 3 * (i % 2)))
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "validation.jsonl", make_sft_rows(1, seed=2))
    seen = {}
    for bs, accum in ((8, 1), (4, 2), (2, 4)):
        out = tmp_path / f"r{bs}x{accum}"
        assert cli.main(["train", "-q", *sft_overrides(lm, data, out, max_steps=1, eval_steps=1, lora_dropout=0,
                                                       precision="fp32", max_length=64, max_new_tokens=2,
                                                       per_device_train_batch_size=bs,
                                                       gradient_accumulation_steps=accum)]) == 0
        point = _history(out)[1]
        seen[bs] = (point["train/loss"], point["train/grad_norm"])
    assert seen[4] == pytest.approx(seen[8], rel=1e-5)
    assert seen[2] == pytest.approx(seen[8], rel=1e-5)


def test_each_point_logs_the_largest_rate_its_steps_used(sft_run):
    # linear decay after a 1-step warmup (0.06 of 12): the last point's `lr` is the decayed 0, its `lr_max` is not
    history = _history(sft_run)
    lr = 1e-2
    used = [lr * min(1.0, s / 1) * (STEPS - s) / (STEPS - 1) if s else 0.0 for s in range(STEPS)]  # step s+1's rate
    assert "lr_max" not in history[0] and history[0]["lr"] == 0.0
    # a point's `lr` is the rate its own step used (as the HF Trainer logs it), not the next step's (0 at the end)
    assert [p["lr"] for p in history[1:]] == pytest.approx([used[p["step"] - 1] for p in history[1:]])
    assert history[-1]["lr"] > 0
    assert [p["lr_max"] for p in history[1:]] == pytest.approx(
        [max(used[p["step"] - EVERY:p["step"]]) for p in history[1:]])
    assert history[1]["lr_max"] == pytest.approx(lr)


@pytest.mark.parametrize("dry", [True, False])
@pytest.mark.parametrize("problem", ["surrogate", "metric"])
def test_a_prompt_set_training_would_refuse_is_refused_by_the_dry_run_before_anything_is_replaced(
        problem, dry, lm, sft_data, tmp_path, capsys):
    """A lone surrogate in a prompt-set reference started training (deleting the earlier run) and failed at step 0;
    prompt_novel_chrf over familiar rows only passed the dry run (exit 0) while training refused it."""
    rows = [{"prompt": "hello lost my card", "reference": "your card is blocked", "group": "familiar"}]
    extra = {}
    if problem == "surrogate":
        rows.append({"prompt": "pin", "reference": "your \ud83d pin", "group": "novel"})
    else:
        extra["metric_for_best_model"] = "prompt_novel_chrf"
    write_jsonl(tmp_path / "ps.jsonl", rows)
    out = tmp_path / "run"
    assert cli.main(["train", "-q", *(["--dry-run"] if dry else []),
                     *sft_overrides(lm, sft_data, out, prompt_set=tmp_path / "ps.jsonl", **extra)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err and not out.exists()
    assert ('row 2: "reference" has a lone surrogate U+D83D' in err if problem == "surrogate" else
            "prompt_novel_chrf scores the prompt set's 'novel' rows, and data.prompt_set has none" in err)


def test_the_dry_run_reads_the_prompt_set_once(lm, sft_data, tmp_path, monkeypatch):
    """api.plan read the prompt set again right after its checks (checks.run_checks, sft.read_prompt_set) had read it: the
    items the checks read are the ones the plan prices."""
    from loratune import api, generation, sft
    from loratune.config import load_config

    reads = []

    def counted(path):
        reads.append(path)
        return generation.load_prompt_set.__wrapped__(path)

    counted.__wrapped__ = generation.load_prompt_set
    monkeypatch.setattr(generation, "load_prompt_set", counted)
    monkeypatch.setattr(sft, "load_prompt_set", counted)
    ps = write_jsonl(tmp_path / "ps.jsonl", [{"prompt": "hello lost my card", "reference": "blocked", "group": "novel"}])
    cfg = load_config(overrides=sft_overrides(lm, sft_data, tmp_path / "run", prompt_set=ps))
    planned = api.plan(cfg)
    assert planned["task"] == "causal-lm" and planned["steps"] > 0
    assert len(reads) == 1


def test_generate_capped_says_which_outputs_ran_to_max_new_tokens(lm):
    """A generation that ran to max_new_tokens without an end token is marked capped (the prompt set's
    val/prompt_<group>_capped, which keeps the diagnosis from reading a short len_ratio the cap made as vague
    answers); one that stopped at an end or stop token is not."""
    from transformers import AutoModelForCausalLM

    from loratune.sft import generate_capped

    model = AutoModelForCausalLM.from_pretrained(lm).eval()
    tok = load_tokenizer(load_config(None, sft_overrides(lm, Path("."), Path("run"))).model)
    prompts = encode_prompts(tok, Renderer.for_tokenizer(tok, "auto"),
                             [Example((Turn("user", "lost my card"),), ""), Example((Turn("user", "hello"),), "")], 32)
    with torch.no_grad():  # what greedy decoding writes, prompt by prompt, without any stop
        raw = [model.generate(input_ids=torch.tensor([p]), max_new_tokens=3, do_sample=False, eos_token_id=None,
                              pad_token_id=tok.pad_token_id)[0, len(p):].tolist() for p in prompts]
    assert all(len(r) == 3 for r in raw)
    want = [tok.eos_token_id not in r for r in raw]
    outputs, capped = generate_capped(model, tok, prompts, 3, torch.device("cpu"))
    assert capped == want and outputs == generate(model, tok, prompts, 3, torch.device("cpu"))
    # a stop at the first prompt's second token: it ends there, the other prompt runs on unless it writes that token
    stop = raw[0][1]
    _, capped = generate_capped(model, tok, prompts, 3, torch.device("cpu"), stop_ids=[stop])
    assert capped == [False, want[1] and stop not in raw[1]]
    # a cap of 1 with every first token a stop: none is cut
    _, capped = generate_capped(model, tok, prompts, 1, torch.device("cpu"), stop_ids=[r[0] for r in raw])
    assert capped == [False, False]


def test_references_longer_than_max_new_tokens_are_noted(lm, sft_data, tmp_path, capsys):
    """Generations were cut at train.max_new_tokens silently while the references were longer (max_new_tokens=2: a
    perfect model read len_ratio 0.5): the dry run and run.json's data_notes say how many references the cap cuts."""
    from loratune import api

    ps = write_jsonl(tmp_path / "ps.jsonl", [
        {"prompt": "hello lost my card", "reference": "your card is blocked now and a new one is sent", "group": "novel"},
        {"prompt": "pin", "reference": "ok", "group": "familiar"}])
    cfg = load_config(overrides=sft_overrides(lm, sft_data, tmp_path / "run", prompt_set=ps, max_new_tokens=2))
    note = [n for n in api.plan(cfg)["notes"] if "max_new_tokens" in n]
    assert note == ["1 of 2 prompt-set reference(s) are longer than train.max_new_tokens (2 tokens): their "
                    "generations are cut there, so len_ratio and chrF read answers the cap shortened; raise "
                    "train.max_new_tokens to the references' length"]
    run = api.train(cfg, progress=False)
    assert note[0] in run["data_notes"]
    # each point records how many outputs the cap cut: the diagnosis reads a short len_ratio with them as the cap's
    hist = _history(tmp_path / "run")
    assert all(0.0 <= p[f"val/prompt_{g}_capped"] <= 1.0 for p in hist for g in ("familiar", "novel"))
    assert f"note: {note[0]}" in " ".join(capsys.readouterr().err.split())  # said as the run starts, not only recorded
    from loratune import cli

    assert cli.main(["train", "--dry-run", *sft_overrides(lm, sft_data, tmp_path / "run3", prompt_set=ps,
                                                          max_new_tokens=2)]) == 0
    assert note[0] in " ".join(capsys.readouterr().out.split())  # the dry run prints the plan's note
    long = load_config(overrides=sft_overrides(lm, sft_data, tmp_path / "run2", prompt_set=ps, max_new_tokens=64))
    assert not [n for n in api.plan(long)["notes"] if "max_new_tokens" in n]


def test_a_generative_label_run_records_its_label_counts_and_a_long_tail_is_diagnosed(lm, tmp_path, capsys):
    """A generated-label run recorded its labels but no label_counts (nor unseen_labels), as the classifier's run.json
    has them: long-tail-collapse (the tail/head count ratio) could never fire and show's per-class table had no train
    counts. Now recorded by the classifier's own helper (data.label_count_record)."""
    head, tail = ["balance", "card_lost"], ["pin", "transfer"]
    out = _generate_run_with_refund_in_test(lm, tmp_path, make_rows(20, seed=1, labels=head)
                                            + make_rows(2, seed=4, labels=tail), make_rows(3, seed=2))
    run = json.loads((out / "run.json").read_text())
    assert run["label_counts"] == {"train": {"balance": 20, "card_lost": 20, "pin": 2, "transfer": 2},
                                   "val": {"balance": 3, "card_lost": 3, "pin": 3, "transfer": 3}}
    assert run["unseen_labels"] == {"test": {"refund": 2}}
    # the recorded curve rewritten as a collapsed tail's (the tiny model learns nothing in one step)
    hist = _history(out)
    for p in hist:
        p.update({f"val/recall/{c}": 1.0 for c in head} | {f"val/recall/{c}": 0.0 for c in tail})
    (out / "history.jsonl").write_text("".join(json.dumps(p) + "\n" for p in hist))
    capsys.readouterr()
    cli.main(["diagnose", "--json", str(out)])
    diag = json.loads(capsys.readouterr().out)["runs"][0]
    assert diag["features"]["values"]["tail_head_count_ratio"] == pytest.approx(10.0)  # the code before: null, no label_counts
    assert "long-tail-collapse" in [f["rule_id"] for f in diag["findings"] if not f["suppressed_by"]]
    assert cli.main(["show", str(out)]) == 0
    table = [" ".join(x.split()) for x in capsys.readouterr().out.splitlines()]
    assert any(x.startswith("pin 2 3 ") and x.endswith("tail") for x in table), table


def test_the_adapter_card_names_generations_jsonl_only_when_a_prompt_set_wrote_it(lm, tmp_path):
    """The card said prompt-set outputs were in ../generations.jsonl for every run, one with no prompt set (no such
    file) too; it names the file only where the run (or a tune pick's trial) wrote it."""
    from loratune.sft import saved_model_card
    from loratune.train import CardPick

    cfg = load_config(None, sft_overrides(lm, tmp_path, tmp_path / "run"))
    model, _ = apply_adapter(load_causal_lm(cfg.model), cfg.adapter, task="causal-lm")
    tok = load_tokenizer(cfg.model)
    store = RunStore(tmp_path / "run")
    save_lm(model, tok, cfg, store)
    card = (store.adapter_dir / "README.md").read_text()
    assert "- curves and the configuration: `../history.jsonl`, `../run.json`, `../config.yaml`\n" in card
    assert "generations.jsonl" not in card and "prompt-set" not in card
    (store.path / "generations.jsonl").write_text('{"step": 0}\n')
    save_lm(model, tok, cfg, store)
    card = (store.adapter_dir / "README.md").read_text()
    assert ("- curves, prompt-set outputs and the configuration: `../history.jsonl`, `../generations.jsonl`, "
            "`../run.json`, `../config.yaml`\n") in card
    pick = CardPick(3, "t3", "STUDY_DIR/trials/3-t3")  # a tune pick's card names its trial's files
    assert "`generations.jsonl`" in saved_model_card(store.adapter_dir, cfg, pick, record_dir=store.path)
    assert "generations.jsonl" not in saved_model_card(store.adapter_dir, cfg, pick, record_dir=tmp_path / "none")
