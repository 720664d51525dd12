"""Prompt-set scoring and the prompt-set file (loratune.generation), with hand-computed values."""

from __future__ import annotations

import json

import pytest

from loratune.errors import UserError
from loratune.generation import PROMPT_GROUPS, SCORES, PromptItem, chrf, load_prompt_set, normalise, prompt_key, \
    repetition, score_generations, score_prompt_set


def test_prompt_key_is_one_format_and_rejects_unknown_names():
    assert prompt_key("novel", "chrf") == "val/prompt_novel_chrf"
    assert prompt_key("familiar", "exact_match") == "val/prompt_familiar_exact_match"
    with pytest.raises(ValueError, match="allowed: familiar, novel"):
        prompt_key("train", "chrf")
    with pytest.raises(ValueError, match="unknown prompt-set score"):
        prompt_key("novel", "rouge")


def test_exact_match_normalises_case_and_whitespace():
    assert normalise("  The \n Cat\tsat ") == "the cat sat"
    s = score_generations(["Paris", "  the  Cat ", "no"], ["paris", "the cat", "yes"])
    assert s["exact_match"] == pytest.approx(2 / 3)


def test_chrf_hand_computed():
    # "ab" vs "abc": orders with n-grams on both sides are 1 and 2.
    # n=1: precision 2/2, recall 2/3; n=2: precision 1/1, recall 1/2 -> mean P = 1, mean R = 7/12;
    # F_beta=2 = 5 P R / (4 P + R) = (35/12) / (55/12) = 7/11
    assert chrf("ab", "abc") == pytest.approx(7 / 11)
    assert chrf("the same answer", "the same answer") == pytest.approx(1.0)
    assert chrf("xyz", "abc") == 0.0
    assert chrf("", "") == 1.0  # nothing expected, nothing said
    assert chrf("", "abc") == 0.0


def test_chrf_se_is_the_standard_error_of_the_mean_chrf():
    # per-prompt chrF 1.0 and 0.0: mean 0.5, sample std sqrt(0.5), SE sqrt(0.5) / sqrt(2) = 0.5
    s = score_generations(["same words", "xyz"], ["same words", "abc"])
    assert s["chrf"] == pytest.approx(0.5)
    assert s["chrf_se"] == pytest.approx(0.5)
    assert score_generations(["a b", "a b", "a b"], ["a b", "a b", "a b"])["chrf_se"] == 0.0
    assert score_generations(["x"], ["y"])["chrf_se"] == 0.5  # one prompt: no spread to read, the widest band


def test_len_ratio_is_mean_output_length_over_mean_reference_length():
    # output words 4 + 1 + 1 = 6, reference words 2 + 4 + 0 = 6 -> 1.0 (a mean of row ratios would be ruled by
    # the long answer to a short reference)
    s = score_generations(["a b c d", "a", "anything"], ["a b", "a b c d", "  "])
    assert s["len_ratio"] == pytest.approx(1.0)
    assert score_generations(["one two three four five six seven eight", "x"], ["yes", "a b c d e f g h"])[
        "len_ratio"] == pytest.approx(9 / 9)
    assert score_generations(["a", "b"], ["a b c d", "e f g h"])["len_ratio"] == pytest.approx(0.25)
    assert score_generations(["a"], [" "])["len_ratio"] == 0.0


def test_repetition_is_the_share_of_repeated_word_trigrams():
    # 6 words -> 4 trigrams: (the cat the), (cat the cat), (the cat the), (cat the cat): 2 distinct -> 2/4
    assert repetition("The cat the cat the CAT") == pytest.approx(0.5)
    assert repetition("a b c") == 0.0
    assert repetition("hi") == 0.0  # under 3 words: no trigram to repeat
    s = score_generations(["the cat the cat the cat", "a b c"], ["x", "y"])
    assert s["repetition"] == pytest.approx(0.25)


def test_empty_rate_and_row_count():
    s = score_generations(["", "  \n", "x"], ["a", "b", "x"])
    assert s["empty"] == pytest.approx(2 / 3)
    assert s["n"] == 3.0
    assert set(s) == set(SCORES) - {"capped"} | {"n"}  # capped: only with the flags
    assert score_generations(["a", "b", "c", "d"], ["a"] * 4, [True, False, False, True])["capped"] == 0.5
    with pytest.raises(ValueError, match="1 capped flags for 2 outputs"):
        score_generations(["a", "b"], ["a", "b"], [True])


def test_score_generations_rejects_mismatched_or_empty_lists():
    with pytest.raises(ValueError, match="2 outputs for 1 references"):
        score_generations(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no generations"):
        score_generations([], [])


def test_score_prompt_set_groups_into_history_keys():
    items = [PromptItem("p1", "Paris", "familiar"), PromptItem("p2", "blue", "novel"),
             PromptItem("p3", "four words here now", "novel")]
    out = score_prompt_set(items, ["paris", "red", "four words"])
    assert out[prompt_key("familiar", "exact_match")] == 1.0
    assert out[prompt_key("novel", "exact_match")] == 0.0
    assert out[prompt_key("novel", "len_ratio")] == pytest.approx((1 + 2) / (1 + 4))
    assert len(out) == len(PROMPT_GROUPS) * (len(SCORES) - 1)  # no capped flags: no capped keys
    # the share cut at train.max_new_tokens, per group
    capped = score_prompt_set(items, ["paris", "red", "four words"], [False, True, True])
    assert capped[prompt_key("familiar", "capped")] == 0.0 and capped[prompt_key("novel", "capped")] == 1.0
    assert len(capped) == len(PROMPT_GROUPS) * len(SCORES)
    only_novel = score_prompt_set(items[1:], ["blue", "x"])
    assert all(k.startswith("val/prompt_novel_") for k in only_novel)


def _write(tmp_path, rows, name="prompts.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return p


def test_load_prompt_set_reads_rows(tmp_path):
    p = _write(tmp_path, [{"prompt": "Q1", "reference": "A1", "group": "familiar"},
                          {"prompt": "Q2", "reference": "A2", "group": "novel", "extra": 1}])
    assert load_prompt_set(p) == [PromptItem("Q1", "A1", "familiar"), PromptItem("Q2", "A2", "novel")]


def test_load_prompt_set_names_file_rows_and_fix(tmp_path):
    p = _write(tmp_path, [{"prompt": "Q1", "reference": "A1", "group": "familiar"},
                          {"prompt": "Q2", "reference": "", "group": "novel"},
                          {"prompt": "Q3", "reference": "A3", "group": "held-out"},
                          {"reference": "A4", "group": "novel"}])
    with pytest.raises(UserError) as exc:
        load_prompt_set(p)
    msg = str(exc.value)
    assert str(p) in msg and "3 bad row(s)" in msg
    assert 'row 2: "reference" is empty or not text' in msg
    assert "row 3: \"group\" is 'held-out', allowed: familiar, novel" in msg
    assert 'row 4: "prompt" is missing' in msg
    assert exc.value.fix and '"group": "novel"' in exc.value.fix


def test_load_prompt_set_missing_file_and_bad_json(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_prompt_set(tmp_path / "nope.jsonl")
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "Q", "reference": "A", "group": "novel"}\n{not json\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2 is not valid JSON"):
        load_prompt_set(p)


def test_prompt_set_file_errors_name_data_prompt_set_and_its_rows(tmp_path):
    # the shared reader told a prompt set to fix data.train_file and to hold labelled text
    cases = {"nope.jsonl": "does not exist", "empty.jsonl": "is empty", "folder.jsonl": "is a directory",
             "rows.jsonl": "line 1 is not valid JSON"}
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "folder.jsonl").mkdir()
    (tmp_path / "rows.jsonl").write_text("{not json\n", encoding="utf-8")
    fixes = {}
    for name, state in cases.items():
        with pytest.raises(UserError) as exc:
            load_prompt_set(tmp_path / name)
        assert exc.value.problem == f"prompt set '{tmp_path / name}' {state}" + (
            " (Expecting property name enclosed in double quotes)" if name == "rows.jsonl" else "")
        fixes[name] = exc.value.fix
        assert "data.train_file" not in exc.value.fix and "labelled" not in exc.value.fix
    assert fixes["nope.jsonl"] == fixes["folder.jsonl"] == "check the path (data.prompt_set)"
    assert fixes["empty.jsonl"] == "give a file with a header/rows of prompt / reference / group"
    assert '"reference": "..."' in fixes["rows.jsonl"]


def test_the_shipped_instruction_demo():
    from pathlib import Path

    import loratune

    folder = Path(loratune.__file__).parent / "demo_data" / "instructions"
    assert (folder / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
    assert "yizhongw/self-instruct" in (folder / "SOURCE.md").read_text(encoding="utf-8")
    assert sum(p.stat().st_size for p in folder.iterdir()) < 1_000_000
    items = load_prompt_set(folder / "prompt_set.jsonl")
    assert [sum(it.group == g for it in items) for g in PROMPT_GROUPS] == [20, 20]
    rows = {split: [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
            for split in ("train", "validation")}
    assert (len(rows["train"]), len(rows["validation"])) == (118, 20)
    assert all(r["prompt"].strip() and r["completion"].strip() for rs in rows.values() for r in rs)
    seen = {r["prompt"] for rs in rows.values() for r in rs}
    assert not seen & {it.prompt for it in items}, "a prompt-set prompt leaked into train/validation"
    assert not {r["prompt"] for r in rows["train"]} & {r["prompt"] for r in rows["validation"]}


@pytest.mark.parametrize("column", ["prompt", "reference"])
def test_a_lone_surrogate_in_a_prompt_set_row_is_refused_naming_row_column_and_fix(tmp_path, column):
    """A lone surrogate ('hello \\ud83d lost') failed the tokenizer with a TypeError traceback (a prompt) or training
    at step 0 with a UnicodeEncodeError (a reference); now data.check_characters' UserError, naming the row."""
    row = {"prompt": "hello lost", "reference": "your card", "group": "novel"}
    row[column] = row[column].replace(" ", " \ud83d ")
    p = tmp_path / "ps.jsonl"
    p.write_text(json.dumps({"prompt": "q", "reference": "a", "group": "familiar"}) + "\n" + json.dumps(row) + "\n",
                 encoding="utf-8")  # json.dumps writes the surrogate as \ud83d, as a cut emoji arrives
    with pytest.raises(UserError) as exc:
        load_prompt_set(p)
    assert f'row 2: "{column}" has a lone surrogate U+D83D' in str(exc.value)
    assert exc.value.fix == "remove the character or restore its pair (e.g. \\ud83d\\ude00 is one emoji)"


def test_a_prompt_given_twice_is_refused_naming_its_rows_and_groups(tmp_path):
    """Copies were scored as more prompts: 5 copies took prompt_novel_drift_se from 0.777 to 2.332, past the
    overfit rule's drop_se_min; the same prompt in familiar and novel was accepted too."""
    rows = [{"prompt": "lost my  card", "reference": "blocked", "group": "familiar"},
            {"prompt": "what is my balance", "reference": "shown", "group": "novel"},
            {"prompt": "lost my card", "reference": "blocked", "group": "novel"},
            {"prompt": "what is my balance", "reference": "shown", "group": "novel"},
            {"prompt": [{"role": "user", "content": "what is my balance"}], "reference": "shown", "group": "novel"}]
    with pytest.raises(UserError) as exc:
        load_prompt_set(_write(tmp_path, rows))
    msg = str(exc.value)
    assert "2 prompt(s) given more than once" in msg
    assert "rows 1, 3 (familiar, novel): 'lost my  card'" in msg and "rows 2, 4, 5 (novel): 'what is my balance'" in msg
    assert exc.value.fix == "keep one row per prompt (a prompt is familiar or novel, not both)"
    assert len(load_prompt_set(_write(tmp_path, rows[:2]))) == 2  # distinct prompts pass


def test_the_same_prompt_is_the_same_text_spaces_aside_and_no_looser(tmp_path):
    """A prompt given twice is refused; one that differs in case, a symbol or punctuation is another prompt (other
    token ids, generated apart). Keyed by data.text_key (which drops symbols), 'what is 2+2' / 'what is 2*2' and
    'explain C++' / 'explain C#' were refused as copies, and no maths or code prompt set could be used."""
    from loratune.generation import SAME_PROMPT

    for a, b in (("what  is my balance", "what is my balance"), (" what is my balance\n", "what is my balance")):
        rows = [{"prompt": a, "reference": "r", "group": "novel"}, {"prompt": b, "reference": "r", "group": "novel"}]
        with pytest.raises(UserError) as exc:
            load_prompt_set(_write(tmp_path, rows))
        assert f"1 prompt(s) given more than once ({SAME_PROMPT}; a copy is scored twice" in str(exc.value)
    assert SAME_PROMPT == "the same turns with the same texts, spaces aside"
    for a, b in (("what is 2+2", "what is 2*2"), ("explain C++", "explain C#"), ("is 5 > 3", "is 5 < 3"),
                 ("raise by 50%", "raise by 50"), ("What is my balance", "what is my balance"),
                 ("what is my balance?", "what is my balance"), ("x²", "x2")):
        rows = [{"prompt": a, "reference": "r", "group": "novel"}, {"prompt": b, "reference": "r", "group": "novel"}]
        assert len(load_prompt_set(_write(tmp_path, rows))) == 2, (a, b)


def test_an_empty_turn_list_prompt_gets_a_fix_that_the_prompt_set_accepts(tmp_path):
    """{"prompt": []} got the training chat's fix, [user, assistant] turns, and a prompt written so was refused next
    ('ends with its assistant turn'): the fix is a prompt's shape, ending with a user turn, and its example is
    accepted."""
    import json
    import re

    from loratune.sft_data import PROMPT_SHAPE

    with pytest.raises(UserError) as exc:
        load_prompt_set(_write(tmp_path, [{"prompt": [], "reference": "r", "group": "novel"}]))
    assert "row 1: column 'prompt' is not a list of {role, content} turns" in exc.value.problem
    assert PROMPT_SHAPE in exc.value.fix and '"assistant"' not in exc.value.fix
    example = json.loads(re.search(r"\[\{.*\}\]", PROMPT_SHAPE).group(0).replace('"..."', '"hi"'))
    assert len(load_prompt_set(_write(tmp_path, [{"prompt": example, "reference": "r", "group": "novel"}]))) == 1


def test_a_lone_surrogate_in_a_prompts_turn_names_the_turn(tmp_path):
    """A surrogate in the second turn of a chat prompt was said to be in '"prompt"' at character 4 of a text the
    row does not hold: the turn is named."""
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi \ud83d"}]
    with pytest.raises(UserError) as exc:
        load_prompt_set(_write(tmp_path, [{"prompt": chat, "reference": "r", "group": "novel"}]))
    assert "row 1: turn 2 (user) of \"prompt\" has a lone surrogate U+D83D at character 4 (after 'hi ')" in str(exc.value)


def test_the_docs_say_what_a_prompt_set_row_may_be():
    """README, data.prompt_set's help and this module's docstring said rows 'prompt, reference, group' only: a
    prompt of turns and the refusal of a prompt given twice are said."""
    from dataclasses import fields
    from pathlib import Path

    from loratune import generation
    from loratune.config import DataConfig

    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().replace("`", "").split())
    for text in (readme, " ".join(next(f for f in fields(DataConfig) if f.name == "prompt_set").metadata["help"].split()), " ".join(generation.__doc__.split())):
        assert "{role, content} turns ending with a user turn" in text
        assert "the same turns with the same texts, spaces aside" in text or "spaces aside, is refused" in text


def test_a_prompt_given_as_chat_turns_is_read_as_trls_conversational_prompt(tmp_path):
    from loratune.sft_data import Turn

    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "lost my card"}]
    items = load_prompt_set(_write(tmp_path, [{"prompt": chat, "reference": "blocked", "group": "novel"}]))
    assert items == [PromptItem((Turn("system", "be brief"), Turn("user", "lost my card")), "blocked", "novel")]
    assert items[0].text == "be brief\nlost my card"
    bad = [{"prompt": chat + [{"role": "assistant", "content": "x"}], "reference": "r", "group": "novel"},
           {"prompt": [{"role": "robot", "content": "x"}], "reference": "r", "group": "novel"}]
    with pytest.raises(UserError) as exc:
        load_prompt_set(_write(tmp_path, bad))
    assert 'row 1: "prompt" ends with its assistant turn, not a user turn' in str(exc.value)
    assert "row 2: turn 1 has role 'robot'" in str(exc.value)
