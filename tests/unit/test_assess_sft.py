"""Phase 0 of task causal-lm (assess.sft): what `loratune assess task=causal-lm` proposes must be what `train` takes,
on tiny word-level models saved to tmp (sft_support), in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from loratune import cli
from sft_support import make_sft_rows, make_tokenizer
from support import FILLERS, INTENTS, write_jsonl


def save_tiny_opt_lm(folder: Path, positions: int = 32) -> str:
    """A random-init OPTForCausalLM with learned positions (`positions` of them) and make_tokenizer's plain tokenizer."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(chat_template=False)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=len(tok), hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=positions, word_embed_proj_dim=32,
                             pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    return str(folder)


def labelled_rows(n_per_label: int, seed: int, phrases: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = [{"text": " ".join(f"{rng.choice(FILLERS)} {rng.choice(INTENTS[label])}" for _ in range(phrases)),
             "label": label} for label in INTENTS for _ in range(n_per_label)]
    rng.shuffle(rows)
    return rows


def assess_json(capsys, *args: str) -> tuple[int, dict | None]:
    code = cli.main(["assess", "task=causal-lm", *args, "--json"])
    out = capsys.readouterr().out
    return code, (json.loads(out) if code == 0 else None)


def test_proposed_max_length_leaves_room_for_the_generated_label(tmp_path, capsys):
    # OPT's 32 learned positions and label_format=generate: the start config proposed max_length=32 (the positions
    # alone), which train refuses: "set max_length=29 or less" (the label's tokens and 2 are generated after it)
    lm = save_tiny_opt_lm(tmp_path / "opt")
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", labelled_rows(6, seed=1, phrases=6))
    write_jsonl(data / "validation.jsonl", labelled_rows(2, seed=2, phrases=6))
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", "label_format=generate",
                          "max_length=16")
    assert code == 0 and a["facts"]["generated_tokens"] == 3 and a["facts"]["model_max_positions"] == 32
    c = next(c for c in a["recommendation"]["choices"] if c["rule"] == "start-max-length-p99")
    assert c["value"] == 29 == a["recommendation"]["overrides"]["model.max_length"]
    assert c["reason"].endswith("capped at the model's 32 positions less the 3 tokens generated after a prompt")
    # and train takes it: the check train runs (api.check's) passes at the proposed value, refuses one more
    from loratune import api
    from loratune.errors import UserError

    for length in (29, 30):
        cfg = api.load_config(None, ["task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}",
                                     "label_format=generate", f"max_length={length}"])
        if length == 29:
            api.check(cfg, api.prepare(cfg))
        else:
            with pytest.raises(UserError, match="set max_length=29 or less"):
                api.check(cfg, api.prepare(cfg))


def test_max_length_cap_rule_subtracts_generated_tokens():
    from loratune.assess.rules import MAX_LENGTH_CAP_UNKNOWN, max_length_cap, max_length_cap_note, recommend

    facts = {"token_p99": 155.0, "token_p99_ceil": 155, "token_max": 162, "model_max_positions": 64,
             "model_position_limit": 64, "generated_tokens": 10, "train_rows": 100}
    assert max_length_cap(facts) == 54 and max_length_cap({**facts, "generated_tokens": 0}) == 64
    assert max_length_cap({"generated_tokens": 10}) == MAX_LENGTH_CAP_UNKNOWN
    c = next(c for c in recommend(facts).choices if c.rule == "start-max-length-p99")
    assert c.value == 54
    assert max_length_cap_note(facts) == ", capped at the model's 64 positions less the 10 tokens generated after a prompt"


def test_max_length_cap_subtracts_only_where_the_positions_end():
    # Llama (rotary): 256 positions, no limit (check_max_length passes any length). 300 generated tokens proposed
    # max_length=-44 ("capped at the model's 256 positions less the 300 tokens"), which train refused (>= 8); 245
    # proposed 11, under the rule's floor of 16
    from loratune.assess.rules import max_length_cap, max_length_cap_note, recommend

    rotary = {"token_p99": 20.0, "token_p99_ceil": 20, "token_max": 20, "model_max_positions": 256,
              "model_position_limit": None, "train_rows": 16}
    for new in (0, 245, 300):
        facts = {**rotary, "generated_tokens": new}
        assert max_length_cap(facts) == 256
        c = next(c for c in recommend(facts).choices if c.rule == "start-max-length-p99")
        assert c.value == 24 and max_length_cap_note(facts) == ""
    # learned positions: the limit less the generated tokens, never below the config's minimum (8)
    learned = {**rotary, "model_max_positions": 32, "model_position_limit": 32}
    assert max_length_cap({**learned, "generated_tokens": 20}) == 12
    assert max_length_cap({**learned, "generated_tokens": 40}) == 8
    long = {**rotary, "token_p99": 300.0, "token_p99_ceil": 300, "generated_tokens": 300}
    assert max_length_cap_note(long) == ", capped at the model's 256 positions"


def test_assess_proposes_a_max_length_train_takes_on_a_rotary_model(lm_and_data, capsys):
    lm, data = lm_and_data
    ps = data.parent / "ps.jsonl"
    write_jsonl(ps, [{"prompt": "hello", "reference": "x", "group": "novel"}])
    for new in (245, 300):
        code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={ps}",
                              f"max_new_tokens={new}")
        assert code == 0 and a["facts"]["model_max_positions"] == 256 and a["facts"]["model_position_limit"] is None
        length = a["recommendation"]["overrides"]["model.max_length"]
        assert length >= 16
        from loratune import api

        cfg = api.load_config(None, ["task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}",
                                     f"prompt_set={ps}", f"max_new_tokens={new}", f"max_length={length}"])
        api.check(cfg, api.prepare(cfg))


@pytest.fixture(scope="module")
def lm_and_data(tmp_path_factory) -> tuple[str, Path]:
    """A tiny Llama with the plain template (make_tokenizer(False): EOS '</s>') and an SFT data folder: 8 train and 2
    validation rows per intent."""
    from sft_support import save_tiny_llama_lm

    folder = tmp_path_factory.mktemp("assess-sft")
    lm = save_tiny_llama_lm(folder / "lm", chat_template=False)
    data = folder / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_sft_rows(8, seed=1))
    write_jsonl(data / "validation.jsonl", make_sft_rows(2, seed=2))
    return lm, data


def test_assess_refuses_a_prompt_set_train_refuses(lm_and_data, tmp_path, capsys):
    # a missing or malformed prompt set: assess printed "start with: loratune train ..." and exited 0; train exits 2
    lm, data = lm_and_data
    bad = tmp_path / "ps_bad.jsonl"
    write_jsonl(bad, [{"prompt": "hello", "reference": "x", "group": "bogus"}])
    for ps, said in ((tmp_path / "missing.jsonl", "does not exist"), (bad, "\"group\" is 'bogus'")):
        code = cli.main(["assess", "task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={ps}"])
        out, err = capsys.readouterr()
        assert code == 2 and "start with" not in out and said in err
    good = tmp_path / "ps.jsonl"
    write_jsonl(good, [{"prompt": "hello", "reference": "x", "group": "novel"}])
    assert assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={good}")[0] == 0


def test_assess_refuses_a_tokenizer_with_no_eos_under_the_plain_template(tmp_path, lm_and_data, capsys):
    from sft_support import save_tiny_llama_lm

    tok = make_tokenizer(chat_template=False)
    tok.eos_token = None
    lm = save_tiny_llama_lm(tmp_path / "noeos", tokenizer=tok)
    code = cli.main(["assess", "task=causal-lm", f"name_or_path={lm}", f"dataset_name={lm_and_data[1]}"])
    out, err = capsys.readouterr()
    assert code == 2 and "start with" not in out and "has no eos_token" in err


def test_sft_start_batch_is_capped_at_the_training_rows(lm_and_data, capsys):
    # 5 training rows got batch 8 (one partial batch an epoch); the classifier's rule caps at the rows' power of 2
    from loratune.assess.rules import batch_within_rows, recommend
    from loratune.assess.sft import SFT_START_RULES

    lm, data = lm_and_data
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", "max_train_samples=5")
    c = next(c for c in a["recommendation"]["choices"] if c["rule"] == "start-batch-sft")
    assert code == 0 and a["facts"]["train_rows"] == 5 and c["value"] == 4
    assert a["recommendation"]["overrides"]["train.per_device_train_batch_size"] == 4
    assert c["reason"].startswith("5 training rows: batch 4 sequences")
    for rows, batch in ((1, 1), (7, 4), (8, 8), (5000, 8)):
        facts = {"train_rows": rows, "token_p99": 20.0, "model_hidden": 32, "model_layers": 2}
        assert recommend(facts, SFT_START_RULES).overrides["train.per_device_train_batch_size"] == batch
    assert [batch_within_rows(16, n) for n in (6, 16, 40)] == [4, 16, 16]  # the classifier's rule, the same cap


@pytest.mark.parametrize("think", [False, True])
def test_label_like_completions_count_the_completions_own_tokens_under_chatml(tmp_path, capsys, think):
    # one-word label completions under ChatML (SmolLM2's, the default model's) and Qwen3's template: the median
    # counted '<|im_end|>', '\n' (and Qwen3's empty think block) too, 3 (8) tokens, so label-like-completions never fired
    from sft_support import make_chatml_tokenizer, save_tiny_llama_lm

    lm = save_tiny_llama_lm(tmp_path / "lm", tokenizer=make_chatml_tokenizer(think=think))
    data = tmp_path / "data"
    data.mkdir()
    for split, seed in (("train", 1), ("validation", 2)):
        write_jsonl(data / f"{split}.jsonl", [{"prompt": r["text"], "completion": r["label"]}
                                              for r in labelled_rows(3, seed=seed)])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}")
    assert code == 0 and a["facts"]["template"] == "chat" and a["facts"]["completion_token_p50"] == 1.0
    f = next(f for f in a["findings"] if f["id"] == "label-like-completions")
    assert f["evidence"] == {"completion_token_p50": 1.0} and f["message"].startswith("the median completion is 1 tokens")
    # the trained share still counts what the template writes around each answer (the loss is taken on it)
    assert a["facts"]["completion_share"] > 0
    from loratune.assess.sft import SFT_FACTS

    assert "own text" in SFT_FACTS["completion_token_p50"].meaning


def test_thresholds_reach_the_sft_truncation_warning(lm_and_data, tmp_path, capsys):
    # `assess --thresholds` (and api.assess(thresholds=...), tune's phase 0) were parsed and ignored for causal-lm:
    # the truncation warning used a hard-coded 0.05
    from loratune import api
    from loratune.assess.records import AssessThresholds
    from loratune.search.protocol.phase0 import start_config

    lm, data = lm_and_data
    base = [f"name_or_path={lm}", f"dataset_name={data}", "max_length=18"]  # 7 of 32 rows longer
    code, a = assess_json(capsys, *base)
    share = a["facts"]["truncated_share_at_max_length"]
    assert code == 0 and 0 < share < 1 and AssessThresholds().sft_truncation_share == 0.05
    ids = lambda a: [f["id"] for f in a["findings"]]  # noqa: E731
    assert ("truncated-rows" in ids(a)) == (share > 0.05)
    above, below = tmp_path / "above.yaml", tmp_path / "below.yaml"
    above.write_text(f"sft_truncation_share: {min(1.0, share + 0.01):.4f}\n")
    below.write_text(f"sft_truncation_share: {share / 2:.4f}\n")
    code, a = assess_json(capsys, *base, "--thresholds", str(above))
    assert code == 0 and "truncated-rows" not in ids(a)
    code, a = assess_json(capsys, *base, "--thresholds", str(below))
    f = next(f for f in a["findings"] if f["id"] == "truncated-rows")
    assert f["evidence"] == {"share": share, "sft_truncation_share": round(share / 2, 4)}
    cfg = api.load_config(None, ["task=causal-lm", *base])
    assert "truncated-rows" not in ids(api.assess(cfg, thresholds={"sft_truncation_share": min(1.0, share + 0.01)}))
    assert "truncated-rows" in ids(api.assess(cfg, thresholds={"sft_truncation_share": share / 2}))
    _, a = start_config(cfg, api.prepare(cfg), thresholds=AssessThresholds(sft_truncation_share=share / 2))
    assert "truncated-rows" in ids(a)
    _, a = start_config(cfg, api.prepare(cfg), thresholds=AssessThresholds(sft_truncation_share=1.0))
    assert "truncated-rows" not in ids(a)


def test_generative_assess_checks_label_consistency_duplicates_and_leakage(lm_and_data, tmp_path, capsys):
    # the causal-lm phase 0 never looked at conflicts, duplicates or train/val leakage: the classifier's assess of the
    # same labelled data reported label-conflict-exact, leakage and duplicate-rows, task=causal-lm none of them
    lm, _ = lm_and_data
    train, val = labelled_rows(4, seed=1), labelled_rows(2, seed=2)
    other = next(lab for lab in INTENTS if lab != train[0]["label"])
    train += [{"text": train[0]["text"], "label": other}, dict(train[1])]  # a conflict, a duplicate
    val = [r for r in val if r["text"] not in {t["text"] for t in train}] + [dict(train[2])]  # one leaked row
    gen = tmp_path / "gen"
    gen.mkdir()
    write_jsonl(gen / "train.jsonl", train)
    write_jsonl(gen / "validation.jsonl", val)
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={gen}", "label_format=generate")
    f = a["facts"]
    assert code == 0 and f["exact_conflict_groups"] == 1 and f["duplicate_rows_rows"] >= 1 and f["leak_rows"] >= 1
    by_id = {x["id"]: x for x in a["findings"]}
    assert {"label-conflict-exact", "leakage", "duplicate-rows"} <= set(by_id)
    assert by_id["label-conflict-exact"]["severity"] == "error" and other in by_id["label-conflict-exact"]["message"]
    # the same counts as the classifier's assessment of the same rows (one rule, one place)
    from loratune import api

    c = api.assess(api.load_config(None, [f"name_or_path={lm}", f"dataset_name={gen}"]), probe=False).facts
    for k in ("exact_conflict_groups", "exact_conflict_rows", "duplicate_rows_rows", "leak_rows", "top_conflict_pair"):
        assert f[k] == c[k], k

    # prompt/completion: exact duplicates, one prompt with different completions (a note), a validation prompt
    # trained on
    rows = make_sft_rows(4, seed=1)
    rows += [{"prompt": rows[0]["prompt"], "completion": "the transfer is sent" if rows[0]["completion"] !=
              "the transfer is sent" else "your pin is reset"}, dict(rows[1])]
    pc = tmp_path / "pc"
    pc.mkdir()
    write_jsonl(pc / "train.jsonl", rows)
    seen = {r["prompt"] for r in rows}
    write_jsonl(pc / "validation.jsonl", [r for r in make_sft_rows(3, seed=2) if r["prompt"] not in seen]
                + [{"prompt": rows[2]["prompt"], "completion": "anything"}])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={pc}")
    by_id = {x["id"]: x for x in a["findings"]}
    assert code == 0 and by_id["prompt-several-completions"]["severity"] == "info"
    assert by_id["prompt-several-completions"]["evidence"]["exact_conflict_groups"] >= 1
    assert by_id["leakage"]["evidence"]["leak_rows"] == 1 and by_id["leakage"]["severity"] == "error"
    assert by_id["duplicate-rows"]["evidence"]["duplicate_rows_rows"] >= 1
    assert "label-conflict-exact" not in by_id


def test_sft_rule_tables_lint_clean():
    from loratune.assess.rules import lint_rules
    from loratune.assess.sft import GENERATE_CONSISTENCY_RULES, OPEN_CONSISTENCY_RULES, SFT_START_RULES

    assert lint_rules(SFT_START_RULES, GENERATE_CONSISTENCY_RULES) == []
    assert lint_rules(SFT_START_RULES, OPEN_CONSISTENCY_RULES) == []


def test_assess_refuses_what_train_refuses(lm_and_data, tmp_path, capsys):
    # one training row, no validation file: assess printed 'start with: loratune train ...' (exit 0) while train
    # --dry-run refused it ('validation: 0 rows'): assess ran its own list of checks, not train's (checks.run_checks)
    lm, _ = lm_and_data
    data = tmp_path / "one"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_sft_rows(8, seed=1)[:1])
    code = cli.main(["assess", "task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}"])
    err = capsys.readouterr().err
    assert code == 2 and "validation: 0 rows" in err
    code = cli.main(["train", "task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}", "--dry-run"])
    assert code == 2 and "validation: 0 rows" in capsys.readouterr().err


def test_open_completions_keep_the_symbols_of_a_prompt(lm_and_data, tmp_path, capsys):
    # arithmetic: train 'what is a + b' -> sum and 'what is a * b' -> product, validation 'what is a - b': the
    # classifier's key (punctuation and symbols as spaces) made them one prompt: 'leakage (train->validation 18)',
    # 'duplicate-rows 1' (2 + 2 and 2 * 2 are both 4) and 18 prompts with several completions
    lm, _ = lm_and_data
    data = tmp_path / "math"
    data.mkdir()
    pairs = [(a, b) for a in range(1, 4) for b in range(1, 7)]
    write_jsonl(data / "train.jsonl", [{"prompt": f"what is {a} {op} {b}", "completion": str(f(a, b))}
                                       for a, b in pairs for op, f in (("+", int.__add__), ("*", int.__mul__))])
    write_jsonl(data / "validation.jsonl", [{"prompt": f"what is {a} - {b}", "completion": str(a - b)}
                                            for a, b in pairs])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}")
    assert code == 0
    f = a["facts"]
    assert (f["leak_rows"], f["duplicate_rows_rows"], f["exact_conflict_groups"]) == (0, 0, 0)
    assert {x["id"] for x in a["findings"]} & {"leakage", "duplicate-rows", "prompt-several-completions"} == set()
    # case and spaces still aside: 'What is 1 + 1 ' in validation is train's prompt
    write_jsonl(data / "validation.jsonl", [{"prompt": "What  is 1 + 1 ", "completion": "2"},
                                            {"prompt": "what is 1 - 1", "completion": "0"}])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}")
    assert code == 0 and a["facts"]["leak_rows"] == 1 and a["facts"]["leak_where"] == "train->validation 1"


def test_open_completions_fold_sentence_punctuation_and_keep_symbols(lm_and_data, tmp_path, capsys):
    # a copy differing by commas, a question mark and case is train's prompt: keyed with every punctuation mark kept,
    # validation 'Please, how much money do I have, can you?' (train: 'please how much money do i have can you') was
    # no leak (leak_rows 0; the classifier's key: 1), while 'what is a + b' / 'a - b' / 'a * b' stay three prompts
    from loratune.assess.sft import OPEN_PROMPT_KEY

    assert OPEN_PROMPT_KEY("Please, how much money do I have, can you?") == "please how much money do i have can you"
    assert OPEN_PROMPT_KEY('\u201cWhat is 2 + 3?\u201d') == "what is 2 + 3" == OPEN_PROMPT_KEY("what is 2 + 3!")
    assert len({OPEN_PROMPT_KEY(t) for t in ("what is a + b", "what is a - b", "what is a * b", "what is a / b",
                                               "what is a = b", "what is a+b", "what is a-b")}) == 7
    assert len({OPEN_PROMPT_KEY(t) for t in ("explain C++", "explain C#", "is 3.5 > 35", "is 35 > 35",
                                               "don't stop", "don t stop")}) == 6
    lm, _ = lm_and_data
    data = tmp_path / "punct"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"prompt": "please how much money do i have can you", "completion": "shown"},
                                       {"prompt": "what is 1 + 2", "completion": "3"},
                                       {"prompt": "what is 1 * 2", "completion": "2"}])
    write_jsonl(data / "validation.jsonl", [{"prompt": "Please, how much money do I have, can you?",
                                             "completion": "shown"},
                                            {"prompt": "What is 1 - 2?", "completion": "-1"}])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}")
    assert code == 0
    f = a["facts"]
    assert (f["leak_rows"], f["leak_where"]) == (1, "train->validation 1")
    assert (f["duplicate_rows_rows"], f["exact_conflict_groups"]) == (0, 0)


def test_a_sampled_near_search_says_its_counts_are_lower_bounds(lm_and_data, tmp_path, capsys, monkeypatch):
    # past NEIGHBOUR_COMPARISONS_MAX the near search queries a sample: the classifier's assessment says the near
    # counts are lower bounds (neighbour_sample_note); the causal-lm one gave notes [] (20k rows: near_leak_rows 25)
    from loratune.assess import profile

    lm, _ = lm_and_data
    data = tmp_path / "labelled"
    data.mkdir()
    write_jsonl(data / "train.jsonl", labelled_rows(8, seed=1, phrases=3))
    write_jsonl(data / "validation.jsonl", labelled_rows(2, seed=2, phrases=3))
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", "label_format=generate")
    assert code == 0 and not any("lower bounds" in n for n in a["notes"])
    monkeypatch.setattr(profile, "NEIGHBOUR_COMPARISONS_MAX", 100)
    monkeypatch.setattr(profile, "NEIGHBOUR_QUERIES_MIN", 5)
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", "label_format=generate")
    assert code == 0
    unique = len({" ".join(r["text"].split()) for r in labelled_rows(8, 1, 3) + labelled_rows(2, 2, 3)})
    assert profile.neighbour_sample_note(unique) in a["notes"]
    assert f"a fixed sample of 5 of {unique:,} unique texts" in profile.neighbour_sample_note(unique)


def test_consistency_facts_are_the_classifiers_formulas(lm_and_data, monkeypatch):
    # one rule, one place: assess.sft re-implemented the classifier's conflict, duplicate and leakage facts
    # (top_conflict_pair, *_where, leak_rows, near_leak_examples); both now read assess.facts.consistency_facts
    from loratune import api
    from loratune.assess import facts as F
    from loratune.assess import sft as S
    from loratune.config import TASK_DEFAULTS

    lm, data = lm_and_data
    calls = []
    real = F.consistency_facts
    monkeypatch.setattr(F, "consistency_facts", lambda *a: calls.append(a) or real(*a))
    cfg = api.load_config(None, ["task=causal-lm", f"name_or_path={lm}", f"dataset_name={data}"])
    got, notes = S.consistency_facts(api.prepare(cfg))
    assert len(calls) == 1 and got == {k: v for k, v in real(*calls[0]).items() if k in S.CONSISTENCY_FACTS}
    assert set(S.CONSISTENCY_FACTS) == set(real(*calls[0])) and notes == []
    # the start batch is the task's default batch, read from config
    assert S.SFT_START_BATCH == TASK_DEFAULTS["causal-lm"]["train.per_device_train_batch_size"]


def test_rules_prints_the_causal_lm_rows_and_facts(capsys):
    # `loratune rules` said it prints the assess rule tables, yet start-batch-sft, start-epochs-sft,
    # prompt-several-completions, truncated-rows (the one reader of sft_truncation_share) and SFT_FACTS were in none
    assert cli.main(["rules", "--json", "--features"]) == 0
    out = json.loads(capsys.readouterr().out)
    ids = {r["id"] for r in out["assess"]}
    assert {"start-batch-sft", "start-epochs-sft", "start-dropout-by-rows-sft", "prompt-several-completions",
            "truncated-rows", "label-like-completions"} <= ids
    trunc = next(r for r in out["assess"] if r["id"] == "truncated-rows")
    assert "t.sft_truncation_share" in trunc["when"]
    assert {"completion_token_p50", "completion_share", "template", "model_position_limit"} <= set(out["assess_facts"])
    assert cli.main(["rules", "--features"]) == 0
    text = capsys.readouterr().out
    assert "start-batch-sft" in text and "prompt-several-completions" in text and "completion_share" in text


def test_the_code_written_findings_are_one_table_with_the_facts_they_read():
    # SFT_CODE_FINDINGS restated the id, severity and condition sft_findings hard-coded, and its truncated-rows row
    # said uses [] though it reads truncated_share_at_max_length: sft_findings now reads the table's rows
    from loratune.assess.records import AssessThresholds
    from loratune.assess.sft import SFT_CODE_FINDINGS, SFT_FACTS, sft_findings, sft_rule_catalog

    catalog = {r["id"]: r for r in sft_rule_catalog() if r["id"] in {f.id for f in SFT_CODE_FINDINGS}}
    assert catalog["truncated-rows"]["uses"] == ["truncated_share_at_max_length", "token_p99_ceil"]
    assert catalog["truncated-rows"]["when"] == "truncated_share_at_max_length > t.sft_truncation_share"
    assert catalog["label-like-completions"]["uses"] == ["completion_token_p50"]
    from loratune.assess.facts import FACTS

    assert all(set(r["uses"]) <= set(SFT_FACTS) | set(FACTS) and r["uses"] for r in catalog.values())
    facts = {"truncated_share_at_max_length": 0.5, "token_p99_ceil": 40, "completion_token_p50": 1.0}
    t = AssessThresholds()
    found = {f["id"]: f for f in sft_findings(facts, thresholds=t)}
    assert {i: (f["severity"]) for i, f in found.items()} == {i: r["severity"] for i, r in catalog.items()}
    # the condition the table prints is the one the findings run: at the threshold, no truncation finding
    at = {**facts, "truncated_share_at_max_length": t.sft_truncation_share}
    assert "truncated-rows" not in {f["id"] for f in sft_findings(at, thresholds=t)}


def test_a_pool_keys_a_text_its_key_empties_by_data_text_key_s_rule():
    # TextPool.text_key copied data.text_key's rule for keys other than normalise; data.text_key takes the key
    from loratune.assess.profile import TextPool
    from loratune.assess.sft import OPEN_PROMPT_KEY
    from loratune.data import text_key

    assert text_key("Hi, there!") == "hi there" and text_key("?!  ?") == "?! ?"
    assert text_key("What is 1 + 2?", OPEN_PROMPT_KEY) == "what is 1 + 2" and text_key("?!  ?", OPEN_PROMPT_KEY) == "?! ?"
    assert TextPool([], {}, OPEN_PROMPT_KEY).text_key("?!  ?") == "?! ?"
    assert TextPool([], {}, OPEN_PROMPT_KEY).text_key("A + b!") == "a + b"


def test_a_prompt_set_prompt_copied_from_training_is_flagged_as_leakage(lm_and_data, tmp_path, capsys):
    # a prompt-set row whose prompt is a training prompt (spaces and case aside, as train/validation copies are keyed)
    # scores memorisation, not behaviour: assess flagged train/validation copies and said nothing of the prompt set
    import json as _json

    lm, data = lm_and_data
    train = [_json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    copied = "  " + train[0]["prompt"].upper().replace(" ", "   ") + " "
    held = "a prompt no training row holds"
    assert held not in {r["prompt"] for r in train}
    ps = tmp_path / "ps.jsonl"
    write_jsonl(ps, [{"prompt": copied, "reference": "x", "group": "familiar"},
                     {"prompt": held, "reference": "y", "group": "novel"}])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={ps}")
    by_id = {x["id"]: x for x in a["findings"]}
    assert code == 0 and by_id["leakage"]["severity"] == "error"
    assert by_id["leakage"]["evidence"] == {"leak_rows": 1, "leak_where": "train->prompt_set 1"}
    # a prompt set of held-out prompts only: no leakage
    write_jsonl(ps, [{"prompt": held, "reference": "y", "group": "novel"}])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={ps}")
    assert code == 0 and "leakage" not in {x["id"] for x in a["findings"]}


def test_a_prompt_set_prompt_copying_a_system_prompted_training_chat_is_flagged(lm_and_data, tmp_path, capsys):
    # training chats that all carry a system prompt were keyed on their prompt_text (system + user turns), the prompt
    # set's bare prompt on its own text: a verbatim copy of a training user prompt was not flagged. What each asks is
    # compared (the system turns aside); a system prompt shared alone is no copy
    import json as _json

    lm, base = lm_and_data
    system = "You are a helpful assistant who answers briefly."
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train", "validation"):
        rows = [_json.loads(line) for line in (base / f"{name}.jsonl").read_text().splitlines()]
        write_jsonl(data / f"{name}.jsonl", [{"messages": [
            {"role": "system", "content": system}, {"role": "user", "content": r["prompt"]},
            {"role": "assistant", "content": r["completion"]}]} for r in rows])
    first = _json.loads((base / "train.jsonl").read_text().splitlines()[0])["prompt"]
    held = "a prompt no training row holds"
    ps = tmp_path / "ps.jsonl"
    write_jsonl(ps, [{"prompt": first, "reference": "x", "group": "familiar"},
                     {"prompt": held, "reference": "y", "group": "novel"}])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={ps}")
    by_id = {x["id"]: x for x in a["findings"]}
    assert code == 0 and by_id["leakage"]["severity"] == "error"
    assert by_id["leakage"]["evidence"] == {"leak_rows": 1, "leak_where": "train->prompt_set 1"}
    # the same system prompt over held-out questions: no copy
    write_jsonl(ps, [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": held}],
                      "reference": "y", "group": "novel"},
                     {"prompt": [{"role": "system", "content": system}, {"role": "user", "content": held + " too"}],
                      "reference": "z", "group": "familiar"}])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={ps}")
    assert code == 0 and "leakage" not in {x["id"] for x in a["findings"]}
    # a prompt-set chat with the system prompt and a training question: a copy
    write_jsonl(ps, [{"prompt": [{"role": "system", "content": system}, {"role": "user", "content": first}],
                      "reference": "y", "group": "familiar"}])
    code, a = assess_json(capsys, f"name_or_path={lm}", f"dataset_name={data}", f"prompt_set={ps}")
    assert {x["id"]: x for x in a["findings"]}["leakage"]["evidence"] == {
        "leak_rows": 1, "leak_where": "train->prompt_set 1"}
