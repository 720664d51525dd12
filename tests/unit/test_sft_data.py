"""SFT data (task causal-lm): reading prompt/completion and chat rows, rendering (chat template or the plain
template), the loss mask on prompt tokens, truncation that keeps the completion, and the loss itself."""

from __future__ import annotations

import pytest
import torch

from loratune.config import DataConfig
from loratune.errors import UserError
from loratune.sft import token_stats
from loratune.sft_data import (IGNORE, PLAIN_TEMPLATE, Example, Renderer, Turn, check_end_token, encode_prompts, stop_token_ids,
                               encode_sft, end_marker, fit, load_sft_dataset, parse_sft_rows, special_prefix)

from sft_support import CHAT_TEMPLATE, make_chatml_tokenizer, make_sft_rows, make_tokenizer
from support import write_jsonl

PAIR = Example((Turn("user", "hello lost my card"),), "your card is blocked")


def tokens(tok, ids):
    return tok.convert_ids_to_tokens(ids)


# ---------------------------------------------------------------------------------------------
# rendering


def test_a_tokenizer_with_a_chat_template_renders_through_it_and_ends_on_its_end_of_turn_token():
    tok = make_tokenizer(chat_template=True)
    r = Renderer.for_tokenizer(tok, "auto")
    assert r.mode == "chat"
    assert r.prompt(PAIR.prompt) == "<|user|> hello lost my card <|end|> <|assistant|> "
    assert r.completion(PAIR.prompt, PAIR.completion) == "your card is blocked <|end|> "
    enc = encode_sft(tok, r, [PAIR], 64)
    assert tokens(tok, enc.ids[0]) == ["<|user|>", "hello", "lost", "my", "card", "<|end|>", "<|assistant|>",
                                       "your", "card", "is", "blocked", "<|end|>"]
    assert enc.prompt_lens.tolist() == [7]  # the template's end-of-turn is the EOS: not appended twice


def test_a_tokenizer_without_a_chat_template_gets_the_plain_template_and_an_eos():
    tok = make_tokenizer(chat_template=False)
    r = Renderer.for_tokenizer(tok, "auto")
    assert r.mode == "plain"
    assert r.prompt(PAIR.prompt) == "### User:\nhello lost my card\n\n### Assistant:\n"
    assert PLAIN_TEMPLATE["generation"] == "### Assistant:\n"
    enc = encode_sft(tok, r, [PAIR], 64)
    assert tokens(tok, enc.ids[0])[-5:] == ["your", "card", "is", "blocked", "</s>"]
    assert enc.prompt_lens.tolist() == [len(enc.ids[0]) - 5]


def test_eos_is_appended_unless_the_completion_ends_with_it_or_with_the_templates_end_of_turn():
    """A completion holding the EOS token inside ('your </s> pin is reset') got no EOS at its end (the check was
    `eos not in ids`), so the run never learnt to stop after it; the EOS is appended unless the completion ends with
    it, as TRL's `completion.endswith(eos_token)`, or with the chat template's end of turn holding it (SmolLM2's
    '<|im_end|>\\n')."""
    plain = make_tokenizer(chat_template=False)
    r = Renderer.for_tokenizer(plain, "auto")

    def completion_tokens(tok, renderer, text):
        enc = encode_sft(tok, renderer, [Example((Turn("user", "pin"),), text)], 64)
        return tokens(tok, enc.ids[0][enc.prompt_lens[0]:])

    assert completion_tokens(plain, r, "your </s> pin is reset") == ["your", "</s>", "pin", "is", "reset", "</s>"]
    assert completion_tokens(plain, r, "your pin is reset") == ["your", "pin", "is", "reset", "</s>"]
    assert completion_tokens(plain, r, "your pin is reset </s>") == ["your", "pin", "is", "reset", "</s>"]
    chatml = make_chatml_tokenizer()
    r = Renderer.for_tokenizer(chatml, "auto")
    assert completion_tokens(chatml, r, "your pin is reset") == ["your", "pin", "is", "reset", "<|im_end|>", "\n"]
    assert completion_tokens(chatml, r, "your <|im_end|> pin is reset") == [
        "your", "<|im_end|>", "pin", "is", "reset", "<|im_end|>", "\n"]  # the template's own end: no EOS after it
    chat = make_tokenizer(chat_template=True)  # its end of turn '<|end|> ' holds its EOS '<|end|>'
    assert completion_tokens(chat, Renderer.for_tokenizer(chat, "auto"), "your <|end|> pin") == [
        "your", "<|end|>", "pin", "<|end|>"]
    assert completion_tokens(chat, Renderer.for_tokenizer(chat, "plain"), "your <|end|> pin") == [
        "your", "<|end|>", "pin", "<|end|>"]


def test_a_chat_completion_that_ends_with_the_eos_text_learns_the_end_of_turn_once():
    """SmolLM2 with chat_template=auto and the completion 'Goodbye.<|im_end|>' learnt 'Goodbye.<|im_end|><|im_end|>\\n'
    (the template writes its end after the content again; none/plain learnt one, TRL learns one): the end text is
    dropped from a chat completion before it is rendered, and the split's data note counts the rows."""
    from loratune.sft_data import encoding_notes


    chatml = make_chatml_tokenizer()
    r = Renderer.for_tokenizer(chatml, "auto")
    rows = [Example((Turn("user", "pin"),), "your pin is reset<|im_end|>"),
            Example((Turn("user", "pin"),), "your pin is reset <|im_end|>\n"),
            Example((Turn("user", "pin"),), "your pin is reset")]
    enc = encode_sft(chatml, r, rows, 64)
    for i in range(3):
        assert tokens(chatml, enc.ids[i][enc.prompt_lens[i]:]) == ["your", "pin", "is", "reset", "<|im_end|>", "\n"]
    assert enc.end_stripped == 2
    assert encoding_notes("train", enc, r) == [
        "train: 2 row(s) had an assistant answer ending with '<|im_end|>', which the chat template writes after "
        "every answer: dropped from the answer, so the end is written and learnt once"]
    assert encoding_notes("train", encode_sft(chatml, r, rows[2:], 64), r) == []
    chat = make_tokenizer(chat_template=True)  # '<|end|>' both the end-of-turn mark and the EOS
    enc = encode_sft(chat, Renderer.for_tokenizer(chat, "auto"), [Example((Turn("user", "pin"),), "your pin <|end|>")], 64)
    assert tokens(chat, enc.ids[0][enc.prompt_lens[0]:]) == ["your", "pin", "<|end|>"]
    # plain: the EOS is appended only when the completion does not end with it, as before
    enc = encode_sft(chatml, Renderer.for_tokenizer(chatml, "plain"), rows[:1], 64)
    assert tokens(chatml, enc.ids[0][enc.prompt_lens[0]:]) == ["your", "pin", "is", "reset", "<|im_end|>"]
    assert enc.end_stripped == 0


def test_no_eos_is_learnt_after_a_chat_templates_one_token_end_of_turn_mark_that_generation_stops_at():
    """A Llama-3-style template (its turns end '<|end|>', the EOS '</s>') learnt '... blocked <|end|> </s>': an EOS the
    template never writes, after the mark a generation already stops at (stop_token_ids). TRL appends no EOS to a
    conversational completion; neither does encode_sft after a one-token end-of-turn mark."""
    tok = make_tokenizer(chat_template=False)  # '<|end|>' a special token, EOS '</s>'
    tok.chat_template = CHAT_TEMPLATE
    r = Renderer.for_tokenizer(tok, "auto")
    end = tok.convert_tokens_to_ids("<|end|>")
    assert stop_token_ids(tok, r) == [tok.eos_token_id, end]  # generation stops at the mark
    enc = encode_sft(tok, r, [PAIR], 64)
    assert tokens(tok, enc.ids[0][enc.prompt_lens[0]:]) == ["your", "card", "is", "blocked", "<|end|>"]
    # the plain template writes no mark: the EOS still ends the completion
    enc = encode_sft(tok, Renderer.for_tokenizer(tok, "plain"), [PAIR], 64)
    assert tokens(tok, enc.ids[0][enc.prompt_lens[0]:]) == ["your", "card", "is", "blocked", "</s>"]


MULTI = [{"role": "user", "content": "reset my pin"}, {"role": "assistant", "content": "your pin is reset"},
         {"role": "user", "content": "lost my card"}, {"role": "assistant", "content": "your card is blocked"}]


def learnt(tok, enc, row=0):
    return [t for t, label in zip(tokens(tok, enc.ids[row]), enc.labels(row)) if label != IGNORE]


def test_every_assistant_turn_of_a_chat_is_learnt_and_the_last_is_still_generated_from_the_rest():
    """Every assistant turn but a chat's last was folded into the masked prompt, so (N-1)/N of its supervision was
    lost silently (TRL's assistant_only_loss trains them all): each assistant turn's content and end of turn is
    learnt, the record counts them (completion_tokens, scored), and generation still answers the last turn."""
    from loratune.sft_data import encoding_notes

    chatml = make_chatml_tokenizer()
    r = Renderer.for_tokenizer(chatml, "auto")
    split = parse_sft_rows([{"messages": MULTI}], DataConfig(), "f.jsonl", "train")
    enc = encode_sft(chatml, r, split.examples, 128)
    assert learnt(chatml, enc) == ["your", "pin", "is", "reset", "<|im_end|>", "\n",
                                   "your", "card", "is", "blocked", "<|im_end|>", "\n"]
    assert enc.completion_tokens.tolist() == [12] and enc.scored([0]) == 12 and not any(enc.earlier_unlearnt.values())
    # the same text as the last turn learnt alone: only the loss mask differs
    last_only = encode_sft(chatml, r, [Example(split.examples[0].prompt, split.examples[0].completion)], 128)
    assert enc.ids == last_only.ids and enc.prompt_lens.tolist() == last_only.prompt_lens.tolist()
    assert learnt(chatml, last_only) == ["your", "card", "is", "blocked", "<|im_end|>", "\n"]
    gen = encode_prompts(chatml, r, split.examples, 128)[0]
    assert gen == enc.ids[0][:enc.prompt_lens[0]]  # generated from every turn before the last answer
    plain = encode_sft(chatml, Renderer.for_tokenizer(chatml, "plain"), split.examples, 128)
    assert learnt(chatml, plain) == ["your", "pin", "is", "reset", "your", "card", "is", "blocked", "<|im_end|>"]
    # a template that writes an earlier turn otherwise than the last (Qwen3's think block): the last answer only,
    # the earlier turns counted in the data notes
    think = make_chatml_tokenizer(think=True)
    rt = Renderer.for_tokenizer(think, "auto")
    enc = encode_sft(think, rt, split.examples, 128)
    assert learnt(think, enc) == ["<think>", "\n\n", "</think>", "\n\n", "your", "card", "is", "blocked",
                                  "<|im_end|>", "\n"]
    assert enc.earlier_unlearnt["template"] == 1
    assert encoding_notes("train", enc, rt) == [
        "train: 1 assistant turn(s) before the last are not learnt, only their chats' last answers: the chat template "
        "does not write an earlier turn as it writes it when it is the last (or refuses the chat cut before it)"]


def test_a_conversational_prompts_assistant_turns_are_not_learnt_and_truncation_keeps_the_last_answer():
    """A prompt/completion row learns its completion only (TRL's completion_only_loss), whatever turns its prompt
    holds; a chat cut to max_length loses its beginning, an earlier answer partly kept learns what is left of it."""
    from loratune.sft_data import encoding_notes

    chat = make_tokenizer(chat_template=True)
    r = Renderer.for_tokenizer(chat, "auto")
    pair = parse_sft_rows([{"prompt": MULTI[:3], "completion": MULTI[3]["content"]}], DataConfig(), "f.jsonl",
                          "train").examples
    assert learnt(chat, encode_sft(chat, r, pair, 128)) == ["your", "card", "is", "blocked", "<|end|>"]
    examples = parse_sft_rows([{"messages": MULTI}], DataConfig(), "f.jsonl", "train").examples
    enc = encode_sft(chat, r, examples, 128)
    assert learnt(chat, enc) == ["your", "pin", "is", "reset", "<|end|>", "your", "card", "is", "blocked", "<|end|>"]
    enc = encode_sft(chat, r, examples, 14)
    assert tokens(chat, enc.ids[0]) == ["is", "reset", "<|end|>", "<|user|>", "lost", "my", "card", "<|end|>",
                                        "<|assistant|>", "your", "card", "is", "blocked", "<|end|>"]
    assert learnt(chat, enc) == ["is", "reset", "<|end|>", "your", "card", "is", "blocked", "<|end|>"]
    assert enc.scored([0]) == 7  # the row's first token predicts nothing
    assert encoding_notes("train", enc, r) == []


def test_an_earlier_assistant_turn_ending_with_the_end_text_is_learnt_once_and_written_once():
    """An earlier turn 'your pin is reset<|im_end|>' was not learnt (only the completion was stripped, so the prompt
    rendered for the next turn held '<|im_end|><|im_end|>' and the pieces did not line up) and the note blamed the
    template: every assistant turn is stripped before rendering, learnt once, and the row counted as stripped."""
    from loratune.sft_data import encoding_notes

    chatml = make_chatml_tokenizer()
    r = Renderer.for_tokenizer(chatml, "auto")
    chat = [dict(MULTI[0]), {"role": "assistant", "content": "your pin is reset<|im_end|>"}, *MULTI[2:]]
    examples = parse_sft_rows([{"messages": chat}], DataConfig(), "f.jsonl", "train").examples
    enc = encode_sft(chatml, r, examples, 128)
    assert learnt(chatml, enc) == ["your", "pin", "is", "reset", "<|im_end|>", "\n",
                                   "your", "card", "is", "blocked", "<|im_end|>", "\n"]
    assert tokens(chatml, enc.ids[0]).count("<|im_end|>") == 4  # user, answer, user, answer: none doubled
    assert enc.end_stripped == 1 and not any(enc.earlier_unlearnt.values())
    clean = encode_sft(chatml, r, parse_sft_rows([{"messages": MULTI}], DataConfig(), "f.jsonl", "train").examples, 128)
    assert enc.ids == clean.ids and enc.earlier == clean.earlier
    assert encode_prompts(chatml, r, examples, 128)[0] == enc.ids[0][:enc.prompt_lens[0]]  # generated as trained
    assert encoding_notes("train", enc, r) == [
        "train: 1 row(s) had an assistant answer ending with '<|im_end|>', which the chat template writes after "
        "every answer: dropped from the answer, so the end is written and learnt once"]


def test_a_chat_opening_with_an_assistant_turn_says_that_turn_is_not_learnt_because_it_opens_the_chat():
    from loratune.sft_data import encoding_notes

    chat = make_tokenizer(chat_template=True)
    r = Renderer.for_tokenizer(chat, "auto")
    rows = [{"messages": [{"role": "assistant", "content": "hello"}, *MULTI]}]
    enc = encode_sft(chat, r, parse_sft_rows(rows, DataConfig(), "f.jsonl", "train").examples, 128)
    assert learnt(chat, enc) == ["your", "pin", "is", "reset", "<|end|>", "your", "card", "is", "blocked", "<|end|>"]
    assert encoding_notes("train", enc, r) == [
        "train: 1 assistant turn(s) before the last open their chats, with no prompt before them: not learnt (nothing "
        "asks for them)"]


def merging_tokenizer():
    """A byte-level BPE tokenizer that reads a text whole (no pre-split) and merges ' ' + '\\n' into one token, as
    SmolLM2's does: 'Hello! ' then '\\n\\n### User' tokenise apart otherwise than together."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab["\u0120\u010a"] = len(vocab)  # ' \n'
    core = Tokenizer(models.BPE(vocab=vocab, merges=[("\u0120", "\u010a")]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens({"eos_token": "</s>", "pad_token": "<pad>"})
    return tok


def test_an_earlier_turn_whose_tokens_run_into_the_next_turn_is_not_learnt_and_the_prompt_is_tokenised_whole():
    """The prompt was tokenised in pieces (each earlier answer apart), so with a tokenizer that merges across a
    turn's edge ('Hello! ' + '\\n\\n###': ' ', '\\n' apart, ' \\n' whole) the trained prompt's ids differed from
    the ids generation reads: the prompt is the whole text's ids, and an earlier turn whose pieces do not tokenise
    as the whole is not learnt (the last answer is), said so in the notes."""
    from loratune.sft_data import encoding_notes

    tok = merging_tokenizer()
    r = Renderer.for_tokenizer(tok, "plain")
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! "},
                          {"role": "user", "content": "sum"}, {"role": "assistant", "content": "four"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"},
                          {"role": "user", "content": "sum"}, {"role": "assistant", "content": "four"}]}]
    examples = parse_sft_rows(rows, DataConfig(), "f.jsonl", "train").examples
    enc = encode_sft(tok, r, examples, 256)
    gen = encode_prompts(tok, r, examples, 256)
    for i in range(2):  # trained on the prompt generation reads
        assert enc.ids[i][:enc.prompt_lens[i]] == gen[i]
    learnt_text = [tok.decode([t for t, lab in zip(enc.ids[i], enc.labels(i)) if lab != IGNORE]) for i in range(2)]
    assert learnt_text == ["four</s>", "Hello!four</s>"]
    assert enc.earlier_unlearnt["tokens"] == 1
    assert encoding_notes("train", enc, r) == [
        "train: 1 assistant turn(s) before the last are not learnt, only their chats' last answers: the tokenizer "
        "writes a chat's text across the edge of a turn as one token, so the turn's own tokens are not in the chat's"]


def test_learning_every_assistant_turn_renders_a_chat_the_same_number_of_times_whatever_its_turns(monkeypatch):
    """Learning every assistant turn rendered each earlier answer's prefix twice (its head, the chat through it), so the
    renders grew with the square of a chat's turns (1,000 rows: 16 turns 3.4 s, 32 turns 5.9 s, against 0.7 s for the
    last answer only): a template that writes chats turn by turn (turn_layout) renders each row three times, its
    prompt, its completion and its prompt with the earlier answers marked, whatever its turns (the same texts:
    test_sft_turn_spans)."""
    chatml = make_chatml_tokenizer()
    r = Renderer.for_tokenizer(chatml, "auto")
    calls = []
    real = Renderer._chat
    monkeypatch.setattr(Renderer, "_chat", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    renders = {}
    for n_turns, n_rows in ((8, 3), (32, 3), (32, 6)):
        turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(n_turns)]
        examples = parse_sft_rows([{"messages": turns}] * n_rows, DataConfig(), "f.jsonl", "train").examples
        calls.clear()
        enc = encode_sft(chatml, r, examples, 4096)
        renders[n_turns, n_rows] = len(calls)
        assert [len(s) for s in enc.earlier] == [n_turns // 2 - 1] * n_rows and not any(enc.earlier_unlearnt.values())
    assert renders[8, 3] == renders[32, 3] and renders[32, 6] - renders[32, 3] == 3 * 3
    from loratune.sft_data import learn_earlier_texts, turn_layout

    layout = turn_layout(r)
    example = examples[0]
    whole = r.prompt(example.prompt)
    calls.clear()
    texts = learn_earlier_texts(r, example, whole, layout)
    assert "".join(texts) == whole and len(texts) == 31 and len(calls) == 1  # the marked prompt


def test_a_sharegpt_turn_marked_weight_0_is_refused_not_learnt_silently():
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "no", "weight": 0},
                               {"from": "human", "value": "sum"}, {"from": "gpt", "value": "four", "weight": 1}]}]
    with pytest.raises(UserError) as err:
        parse_sft_rows(rows, DataConfig(messages_column="conversations"), "f.jsonl", "train")
    assert "assistant turn 2 of column 'conversations' has weight 0" in err.value.problem
    assert "weight key" in err.value.fix
    rows[0]["conversations"][1]["weight"] = 1  # weight 1: learnt, as every assistant turn is
    assert len(parse_sft_rows(rows, DataConfig(messages_column="conversations"), "f.jsonl", "train").examples) == 1


def test_weight_0_on_a_sharegpt_system_or_human_turn_is_read_as_axolotl_writes_it():
    """axolotl's ShareGPT data marks its prompt turns weight 0 (not learnt, as loratune never learns them): the chat
    was refused as if turn 1 were an assistant turn left unlearnt. Only an assistant turn's weight 0 is refused."""
    rows = [{"conversations": [{"from": "system", "value": "be brief", "weight": 0},
                               {"from": "human", "value": "lost my card", "weight": 0},
                               {"from": "gpt", "value": "your card is blocked", "weight": 1}]}]
    examples = parse_sft_rows(rows, DataConfig(messages_column="conversations"), "f.jsonl", "train").examples
    assert len(examples) == 1 and examples[0].completion == "your card is blocked"
    assert examples[0].prompt == (Turn("system", "be brief"), Turn("user", "lost my card"))


def test_a_tokenizer_that_splits_the_eos_text_still_gets_the_eos_id_after_every_completion():
    """With split_special_tokens (SmolLM2's tokenizer loaded so) the EOS text '<|im_end|>' tokenises to '<', '|',
    'im_end', '|', '>': a completion whose text ended with it (the chat template's end of turn, or the user's own
    text) got no EOS id at all, so the run never learnt to write the id generation stops at. Decided on ids: the EOS
    is appended unless the completion's ids end with it or with the end of turn's ids holding it."""
    split = make_chatml_tokenizer(split_eos=True)
    assert tokens(split, split("<|im_end|>", add_special_tokens=False)["input_ids"]) == ["<", "|", "im_end", "|", ">"]

    def completion_tokens(tok, renderer, text):
        enc = encode_sft(tok, renderer, [Example((Turn("user", "pin"),), text)], 64)
        return tokens(tok, enc.ids[0][enc.prompt_lens[0]:])

    end = ["<", "|", "im_end", "|", ">"]
    for template, text, expected in [
            ("auto", "reset", ["reset"] + end + ["\n", "<|im_end|>"]),
            ("plain", "reset<|im_end|>", ["reset"] + end + ["<|im_end|>"]),
            ("plain", "reset", ["reset", "<|im_end|>"])]:
        assert completion_tokens(split, Renderer.for_tokenizer(split, template), text) == expected, (template, text)
    # an end of turn that is the EOS id (the same tokenizer without split_special_tokens): nothing appended after it
    whole = make_chatml_tokenizer()
    assert completion_tokens(whole, Renderer.for_tokenizer(whole, "auto"), "reset") == ["reset", "<|im_end|>", "\n"]
    assert completion_tokens(whole, Renderer.for_tokenizer(whole, "plain"), "reset<|im_end|>") == [
        "reset", "<|im_end|>"]


def test_completions_that_would_never_end_are_refused_but_a_chat_end_of_turn_mark_is_an_end():
    """No eos_token and no end-of-turn mark: the run would teach completions that never stop (generated labels never
    parse), so it is refused naming the fix; a chat template's end-of-turn mark ends a completion without EOS."""
    plain = make_tokenizer(chat_template=False)
    plain.eos_token = None
    for choice in ("auto", "plain", "none"):
        r = Renderer.for_tokenizer(plain, choice)
        assert end_marker(r) == ""
        with pytest.raises(UserError, match="has no eos_token") as exc:
            check_end_token(plain, r, "lm")
        assert "set eos_token in the tokenizer's tokenizer_config.json" in exc.value.fix
    chat = make_tokenizer(chat_template=True)
    chat.eos_token = None
    r = Renderer.for_tokenizer(chat, "auto")
    assert end_marker(r) == "<|end|>"
    check_end_token(chat, r, "lm")  # the template's mark ends every completion
    assert tokens(chat, encode_sft(chat, r, [PAIR], 64).ids[0])[-2:] == ["blocked", "<|end|>"]
    with pytest.raises(UserError, match="'plain' template writes no end-of-turn mark"):
        check_end_token(chat, Renderer.for_tokenizer(chat, "plain"), "lm")
    check_end_token(make_tokenizer(chat_template=False), Renderer.for_tokenizer(plain, "plain"), "lm")  # EOS: fine


def test_a_generation_stops_at_the_templates_end_of_turn_mark_when_the_tokenizer_has_no_eos():
    """A chat template whose turns end with '<|end|>' and a tokenizer with no eos_token passed the end-token check, but
    generation stopped only at EOS: half the generated labels ran on past their label ('card_lost card_lost'). The
    mark is a stop token wherever it is one token; a mark of several tokens with no EOS is refused."""
    chat = make_tokenizer(chat_template=True)
    end = chat.convert_tokens_to_ids("<|end|>")
    chat.eos_token = "</s>"
    assert stop_token_ids(chat, Renderer.for_tokenizer(chat, "auto")) == [chat.eos_token_id, end]
    assert stop_token_ids(chat, Renderer.for_tokenizer(chat, "plain")) == [chat.eos_token_id]
    chat.eos_token = None
    assert stop_token_ids(chat, Renderer.for_tokenizer(chat, "auto")) == [end]
    r = Renderer.for_tokenizer(chat, "auto")
    r_multi = type(r)(**{**r.__dict__}) if hasattr(r, "__dict__") else r
    import loratune.sft_data as sd
    real = sd.end_marker
    try:  # a mark that is several tokens: nothing to stop at, refused
        sd.end_marker = lambda renderer: "END OF TURN"
        assert stop_token_ids(chat, r_multi) == []
        with pytest.raises(UserError, match="end-of-turn mark 'END OF TURN' that is not one token"):
            check_end_token(chat, r_multi, "lm")
    finally:
        sd.end_marker = real


def test_generate_stops_at_the_stop_ids_it_is_given():
    from sft_support import save_tiny_llama_lm
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratune.sft import generate
    folder = save_tiny_llama_lm(Path(tempfile.mkdtemp()) / "lm", chat_template=True)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    prompt = [tok("hello there", add_special_tokens=False)["input_ids"]]
    free = generate(model, tok, prompt, 6, torch.device("cpu"))[0]
    every = list(range(len(tok)))  # whatever it writes first is a stop token: it stops after that one token
    stopped = generate(model, tok, prompt, 6, torch.device("cpu"), stop_ids=every)[0]
    assert len(tok(free, add_special_tokens=False)["input_ids"]) > 1
    assert len(tok(stopped, add_special_tokens=False)["input_ids"]) == 1 and free.startswith(stopped)


def test_the_answer_prefix_a_template_writes_before_every_answer_is_generated_and_read_past():
    """Qwen3's template writes an empty '<think>\\n\\n</think>\\n\\n' before the last assistant turn's content, which
    the generation prompt lacks: it was trained as the completion's start, generation got only the label's tokens + 2
    (it ended inside the think block) and the label was read from the first line ('<think>'), so a generated label
    never parsed (macro-F1 0 at every point). The prefix is found by rendering; a generation's budget is for the
    answer after it, and the answer is read after it."""
    from transformers import GenerationConfig

    from loratune.metrics import parse_labels
    from loratune.sft import generate, label_token_cap
    from loratune.sft_data import answer_prefix

    think = make_chatml_tokenizer(think=True)
    r = Renderer.for_tokenizer(think, "auto")
    prefix = answer_prefix(think, r)
    assert tokens(think, prefix) == ["<think>", "\n\n", "</think>", "\n\n"]
    card = Example((Turn("user", "i lost my card"),), "card_lost")
    enc = encode_sft(think, r, [card], 64)
    completion = enc.ids[0][enc.prompt_lens[0]:]
    assert completion[:len(prefix)] == prefix  # trained as the completion's start, as TRL trains it
    for tok in (make_chatml_tokenizer(), make_tokenizer(chat_template=True), make_tokenizer(chat_template=False)):
        assert answer_prefix(tok, Renderer.for_tokenizer(tok, "auto")) == []  # SmolLM2's ChatML, Zephyr's, plain
    assert answer_prefix(think, Renderer.for_tokenizer(think, "plain")) == []

    class Perfect(torch.nn.Module):
        """Writes what the run trained (the prefix, the label, the end of turn), as far as it is allowed to."""

        generation_config = GenerationConfig()

        def __init__(self):
            super().__init__()
            self.budgets = []

        def generate(self, input_ids, attention_mask, generation_config, synced_gpus):
            self.budgets.append(generation_config.max_new_tokens)
            new = torch.tensor([completion[:generation_config.max_new_tokens]] * len(input_ids))
            return torch.cat([input_ids, new], dim=1)

    labels = ("balance", "card_lost", "pin", "transfer")
    model, cap = Perfect(), label_token_cap(think, labels)
    prompts = encode_prompts(think, r, [card], 64)
    out = generate(model, think, prompts, cap, torch.device("cpu"), stop_ids=stop_token_ids(think, r), prefix=prefix)
    assert out == ["card_lost"] and model.budgets == [cap + 4]
    assert parse_labels(out, labels).tolist() == [1]
    assert generate(model, think, prompts, 1, torch.device("cpu"), prefix=prefix) == ["card_lost"]  # the answer's 1
    # a continuation that does not start with the prefix is read whole (an untrained model's: no label)
    assert generate(model, think, prompts, 2, torch.device("cpu"), prefix=prefix[1:]) == [
        "<think> \n\n </think> \n\n card_lost"]


def test_the_answer_prefix_is_read_past_on_its_text_whitespace_aside_whatever_tokens_wrote_it():
    """The prefix was stripped only when the generated ids matched its ids token for token: a BPE tokenizer trains
    '</think>', 'ĊĊ', 'Ġcard' for a completion starting with a space while the prefix found ends 'Ċ', 'Ċ', so a model
    writing what it was trained on was read whole ('<think> ... card_lost': unknown). The prefix is compared and
    stripped on the decoded text, whitespace aside; a model that does not write it is read whole and still parses."""
    from transformers import GenerationConfig

    from loratune.metrics import parse_labels
    from loratune.sft import generate
    from loratune.sft_data import answer_prefix

    think = make_chatml_tokenizer(think=True)
    r = Renderer.for_tokenizer(think, "auto")
    prefix = answer_prefix(think, r)
    ids = lambda text: think(text, add_special_tokens=False)["input_ids"]  # noqa: E731

    class Writes(torch.nn.Module):
        generation_config = GenerationConfig()

        def __init__(self, continuation):
            super().__init__()
            self.continuation = continuation

        def generate(self, input_ids, attention_mask, generation_config, synced_gpus):
            new = torch.tensor([self.continuation[:generation_config.max_new_tokens]] * len(input_ids))
            return torch.cat([input_ids, new], dim=1)

    labels = ("balance", "card_lost")
    prompts = encode_prompts(think, r, [Example((Turn("user", "i lost my card"),), "x")], 64)
    for written in (prefix + ids("card_lost<|im_end|>"),  # the prefix's own ids
                    ids("<think>\n") + ids("\n</think>\n\ncard_lost<|im_end|>"),  # its line breaks split otherwise
                    ids("<think>\n\n</think>") + ids("card_lost<|im_end|>"),  # without its last line break
                    ids("card_lost<|im_end|>")):  # no prefix at all
        out = generate(Writes(written), think, prompts, 4, torch.device("cpu"), stop_ids=stop_token_ids(think, r),
                       prefix=prefix)
        assert out == ["card_lost"] and parse_labels(out, labels).tolist() == [1], tokens(think, written)
    from loratune.sft import after_prefix

    # the prefix's line breaks may be missing; a continuation only beginning like it is read whole
    assert after_prefix("<think> \n\n </think>card_lost", "<think>\n\n</think>\n\n") == "card_lost"
    assert after_prefix("<think> hmm </think> card_lost", "<think>\n\n</think>\n\n") == (
        "<think> hmm </think> card_lost")
    assert after_prefix(" card lost ", "") == "card lost"


def test_chat_template_choice_overrides_the_tokenizer_and_none_joins_as_written():
    tok = make_tokenizer(chat_template=True)
    assert Renderer.for_tokenizer(tok, "plain").mode == "plain"
    none = Renderer.for_tokenizer(tok, "none")
    assert none.prompt(PAIR.prompt) == "hello lost my card"
    assert none.completion(PAIR.prompt, PAIR.completion) == "your card is blocked"
    chat = (Turn("system", "be brief"), Turn("user", "hello"))
    with pytest.raises(UserError, match="several turns"):
        none.prompt(chat)


def test_system_and_several_turns_render_in_order():
    tok = make_tokenizer(chat_template=False)
    r = Renderer.for_tokenizer(tok, "plain")
    turns = (Turn("system", "be brief"), Turn("user", "lost my card"), Turn("assistant", "your card is blocked"),
             Turn("user", "thanks"))
    assert r.prompt(turns) == ("### System:\nbe brief\n\n### User:\nlost my card\n\n### Assistant:\nyour card is "
                               "blocked\n\n### User:\nthanks\n\n### Assistant:\n")


def test_a_bos_the_tokenizer_adds_is_put_once_before_the_prompt():
    tok = make_tokenizer(chat_template=False, bos=True)
    assert special_prefix(tok) == [tok.bos_token_id]
    enc = encode_sft(tok, Renderer.for_tokenizer(tok, "plain"), [PAIR], 64)
    assert enc.ids[0][0] == tok.bos_token_id and enc.ids[0].count(tok.bos_token_id) == 1
    prompts = encode_prompts(tok, Renderer.for_tokenizer(tok, "plain"), [PAIR], 64)
    assert prompts[0] == enc.ids[0][: enc.prompt_lens[0]]  # generation starts where training's completion does


# ---------------------------------------------------------------------------------------------
# the loss mask and the loss


def test_labels_ignore_exactly_the_prompt_tokens():
    tok = make_tokenizer(chat_template=False)
    examples = [Example((Turn("user", r["prompt"]),), r["completion"]) for r in make_sft_rows(2, seed=0)]
    enc = encode_sft(tok, Renderer.for_tokenizer(tok, "auto"), examples, 64)
    for i, ex in enumerate(examples):
        labels = enc.labels(i)
        n = int(enc.prompt_lens[i])
        assert labels[:n] == [IGNORE] * n
        assert labels[n:] == enc.ids[i][n:]
        assert tok.decode(labels[n:], skip_special_tokens=True) == ex.completion
        assert labels[-1] == tok.eos_token_id


def test_the_loss_ignores_prompt_positions_and_counts_completion_tokens():
    # 1 row, 6 tokens: 3 prompt tokens, then 3 completion tokens; position t predicts token t+1
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 4, 5, 6]])
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 10)
    loss, n, _ = token_stats(logits[:, :-1], labels[:, 1:])
    assert n == 3
    expected = torch.nn.functional.cross_entropy(logits[0, 2:5], labels[0, 3:], reduction="sum")
    assert torch.allclose(loss, expected)
    # logits at positions that predict prompt tokens (0, 1) and the last one (predicts nothing) do not matter
    changed = logits.clone()
    changed[0, [0, 1, 5]] = torch.randn(3, 10) * 100
    assert torch.allclose(token_stats(changed[:, :-1], labels[:, 1:])[0], loss)
    # a logit that predicts a completion token does
    changed[0, 2] += torch.randn(10) * 10
    assert not torch.allclose(token_stats(changed[:, :-1], labels[:, 1:])[0], loss)


def test_token_accuracy_counts_argmax_hits_on_completion_tokens_only():
    labels = torch.tensor([[IGNORE, IGNORE, 1, 2]])
    logits = torch.full((1, 4, 3), -5.0)
    logits[0, 0, 0] = 5.0  # predicts the prompt token at 1: not counted, whatever it says
    logits[0, 1, 1] = 5.0  # predicts token 2 = 1: a hit
    logits[0, 2, 0] = 5.0  # predicts token 3 = 2 as 0: a miss
    _, n, hits = token_stats(logits[:, :-1], labels[:, 1:])
    assert (n, hits) == (2, 1)


# ---------------------------------------------------------------------------------------------
# truncation


@pytest.mark.parametrize("n_prompt,n_completion,max_length,kept", [
    (5, 3, 16, (5, 3, False)),  # fits
    (20, 3, 16, (13, 3, True)),  # long prompt: loses its beginning, the completion stays whole
    (3, 20, 16, (3, 13, True)),  # long completion after a short prompt: cut at its end
    (20, 20, 16, (8, 8, True)),  # both long: the prompt keeps half the room
])
def test_truncation_keeps_the_completion(n_prompt, n_completion, max_length, kept):
    prompt, completion = list(range(100, 100 + n_prompt)), list(range(200, 200 + n_completion))
    ids, n, cut = fit([], prompt, completion, max_length)
    assert len(ids) <= max_length
    assert (n, len(ids) - n, cut) == kept
    assert ids[:n] == prompt[n_prompt - n:]  # the end of the prompt (where the answer starts) is kept
    assert ids[n:] == completion[:len(ids) - n]


def test_truncation_keeps_the_bos_prefix():
    ids, n, cut = fit([1], list(range(100, 120)), [7, 8], 10)
    assert ids[0] == 1 and ids[-2:] == [7, 8] and len(ids) == 10 and n == 8 and cut


# ---------------------------------------------------------------------------------------------
# reading rows


def test_prompt_completion_rows_chats_and_trl_conversational_rows():
    cfg = DataConfig()
    split = parse_sft_rows([{"prompt": "a", "completion": "b"}], cfg, "f.jsonl", "train")
    assert split.examples == (Example((Turn("user", "a"),), "b"),)
    chat = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                          {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
                          {"role": "assistant", "content": "a2"}]}]
    ex = parse_sft_rows(chat, cfg, "f.jsonl", "train").examples[0]
    assert ex.completion == "a2" and [t.role for t in ex.prompt] == ["system", "user", "assistant", "user"]
    trl = [{"prompt": [{"role": "user", "content": "u"}], "completion": [{"role": "assistant", "content": "c"}]}]
    assert parse_sft_rows(trl, cfg, "f.jsonl", "train").examples[0] == Example((Turn("user", "u"),), "c")


def test_content_given_as_text_parts_is_joined_as_chat_templates_read_it():
    # the multimodal-style chat format transformers and TRL accept; it was trained on as its Python repr
    part = lambda text: [{"type": "text", "text": text}]  # noqa: E731
    chat = [{"messages": [{"role": "user", "content": part("lost my card")},
                          {"role": "assistant", "content": [*part("your card "), *part("is blocked")]}]}]
    ex = parse_sft_rows(chat, DataConfig(), "f.jsonl", "train").examples[0]
    assert ex == Example((Turn("user", "lost my card"),), "your card is blocked")
    trl = [{"prompt": [{"role": "user", "content": part("u")}], "completion": [{"role": "assistant",
                                                                                  "content": part("c")}]}]
    assert parse_sft_rows(trl, DataConfig(), "f.jsonl", "train").examples[0] == Example((Turn("user", "u"),), "c")



USER = [{"role": "user", "content": "lost my card"}]


@pytest.mark.parametrize("completion,roles", [
    # several turns were glued with no separator ('your card is blockedthanksyour pin is reset')
    ([{"role": "assistant", "content": "your card is blocked"}, {"role": "user", "content": "thanks"},
      {"role": "assistant", "content": "your pin is reset"}], "assistant, user, assistant"),
    # a user turn was learnt as the answer
    ([{"role": "user", "content": "your card is blocked"}], "user"),
    ([{"role": "system", "content": "be brief"}, {"role": "assistant", "content": "ok"}], "system, assistant"),
])
def test_a_trl_completion_other_than_one_assistant_turn_is_refused_naming_the_row(completion, roles):
    good = {"prompt": USER, "completion": [{"role": "assistant", "content": "your card is blocked"}]}
    with pytest.raises(UserError) as info:
        parse_sft_rows([good, {"prompt": USER, "completion": completion}], DataConfig(), "f.jsonl", "train")
    assert info.value.problem == (f"data file 'f.jsonl' row 2: column 'completion' has the turns ({roles}); the "
                                  "completion must be a single assistant turn")
    assert "move the turns before it into 'prompt'" in info.value.fix and "'messages'" in info.value.fix

@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "user", "content": {"text": "u"}}, {"role": "assistant", "content": "a"}]},
     "turn 1 of column 'messages' has a content of {'text': 'u'}, not a string"),
    ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]},
     "turn 1 of column 'messages' has a content of 5, not a string"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "url": "x.png"}]},
                   {"role": "assistant", "content": "a"}]},
     "turn 1 of column 'messages' has a content part {'type': 'image', 'url': 'x.png'}, not a text part"),
    ({"prompt": "a", "completion": 5}, "has a 'completion' of 5, not a string"),
    ({"prompt": {"q": "a"}, "completion": "b"}, "has a 'prompt' of {'q': 'a'}, not a string"),
    ({"prompt": "a", "completion": [{"role": "assistant", "content": [{"type": "text", "text": " "}]}]},
     "has no completion in column 'completion'"),
])
def test_content_that_is_not_text_is_refused_naming_the_turn(row, message):
    with pytest.raises(UserError, match="row 2") as info:
        parse_sft_rows([_good(row), row], DataConfig(), "f.jsonl", "train")
    assert message in info.value.problem and info.value.fix


@pytest.mark.parametrize("chat_first", [False, True])
def test_a_file_mixing_prompt_completion_and_chat_rows_is_refused_as_mixed(chat_first):
    """The format is taken from row 1: a later row of the other format is a mixed file (one format per file), not a
    row with no prompt or a chat that is not a list of turns. A pair row with a chat column beside it is a pair."""
    cfg = DataConfig()
    pairs = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(3)]
    chat = {"messages": [{"role": "user", "content": "lost my card"},
                         {"role": "assistant", "content": "your card is blocked"}]}
    rows = [chat] + pairs if chat_first else pairs + [chat]
    with pytest.raises(UserError) as info:
        parse_sft_rows(rows, cfg, "f.jsonl", "train")
    first, row = ("a chat row", "row 2 is a prompt/completion row") if chat_first else \
        ("a prompt/completion row", "row 4 is a chat row")
    assert info.value.problem == ("data file 'f.jsonl' mixes prompt/completion rows (columns 'prompt', 'completion') "
                                  f"and chat rows (column 'messages'): the format is taken from row 1, {first}, "
                                  f"and {row}")
    assert info.value.fix.startswith("write one format per file")
    both = pairs + [{**pairs[0], **chat}]  # a pair row that also carries a chat: read as the pair it is
    assert parse_sft_rows(both, cfg, "f.jsonl", "train").examples[3] == Example((Turn("user", "p0"),), "c0")


def test_missing_columns_name_the_columns_found_and_the_fix():
    cfg = DataConfig()
    with pytest.raises(UserError) as info:
        parse_sft_rows([{"instruction": "a", "output": "b"}], cfg, "f.jsonl", "train")
    assert "has neither prompt/completion columns ('prompt', 'completion') nor a chat column ('messages') " \
           "(columns: instruction, output)" in info.value.problem
    assert "data.prompt_column=instruction data.completion_column=output" in info.value.fix
    with pytest.raises(UserError) as info:
        parse_sft_rows([{"prompt": "a", "response": "b"}], cfg, "f.jsonl", "train")
    assert "no column 'completion' (columns: prompt, response)" in info.value.problem
    assert "data.completion_column=response" in info.value.fix


@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "user", "content": "u"}]}, "does not end with an assistant turn"),
    ({"messages": [{"role": "user", "content": "u"}, {"role": "bot", "content": "x"}]}, "has role 'bot'"),
    ({"messages": "hello"}, "is not a list of {role, content} turns"),
    ({"prompt": "a", "completion": ""}, "has no completion in column 'completion'"),
    ({"prompt": None, "completion": "b"}, "has no prompt text in column 'prompt'"),
    ({"prompt": "  ", "completion": "b"}, "has no prompt text in column 'prompt'"),
    # the conversational prompt of blanks was accepted (dry-run rc 0) while a blank text was refused
    ({"prompt": [{"role": "user", "content": "  "}], "completion": "b"}, "has no prompt text in column 'prompt'"),
    ({"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": ""}], "completion": "b"},
     "has no prompt text in column 'prompt'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
     "last assistant turn in 'messages' is empty"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
     "last assistant turn in 'messages' is empty"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": " "},
                   {"role": "assistant", "content": "a"}]}, "has no prompt text in column 'messages'"),
])
def test_a_bad_row_is_named(row, message):
    with pytest.raises(UserError, match="row 2") as info:
        parse_sft_rows([_good(row), row], DataConfig(), "f.jsonl", "train")
    assert message in info.value.problem


CALL = {"role": "assistant", "content": None,
        "tool_calls": [{"type": "function", "function": {"name": "pin", "arguments": {"card": 1}}}]}


@pytest.mark.parametrize("row,message", [
    ({"messages": [{"role": "user", "content": "reset my pin"}, CALL]},
     "turn 2 of column 'messages' is a tool call (tool_calls), and tool calling is not trained"),
    ({"messages": [{"role": "user", "content": "reset my pin"}, CALL, {"role": "tool", "content": "ok"},
                   {"role": "assistant", "content": "done"}]},
     "turn 2 of column 'messages' is a tool call (tool_calls)"),
    ({"messages": [{"role": "user", "content": "reset my pin"}, {"role": "tool", "content": "ok"},
                   {"role": "assistant", "content": "done"}]},
     "turn 2 of column 'messages' is a tool result (role 'tool')"),
    ({"prompt": [{"role": "user", "content": "reset my pin"}], "completion": [CALL]},
     "turn 1 of column 'completion' is a tool call (tool_calls)"),
    ({"messages": [{"role": "user", "content": "reset my pin"}, {"role": "assistant", "content": "done"}],
      "tools": [{"type": "function", "function": {"name": "pin", "parameters": {}}}]},
     "has tools in column 'tools', and tool calling is not trained"),
    ({"prompt": "reset my pin", "completion": "done", "tools": '[{"type": "function"}]'},
     "has tools in column 'tools'"),
])
def test_tool_calling_rows_are_refused_not_trained_as_empty_answers(row, message):
    """A `tools` column was ignored and an assistant turn with content null + tool_calls was rendered as an empty
    assistant turn, so a tool-calling dataset passed --dry-run and trained without its tools or calls: refused as a
    `tool` turn is, naming the row and the fix."""
    with pytest.raises(UserError, match="row 2") as info:
        parse_sft_rows([_good(row), row], DataConfig(), "f.jsonl", "train")
    assert message in info.value.problem
    assert "drop the tool-calling rows" in info.value.fix


def test_empty_tools_and_tool_calls_are_no_tool_calling():
    rows = [{"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello", "tool_calls": []}], "tools": None},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "tools": "[]"}]
    assert [e.completion for e in parse_sft_rows(rows, DataConfig(), "f.jsonl", "train").examples] == ["hello", "yo"]


def test_ultrachat_rows_with_a_prompt_beside_their_chat_are_read_as_chats():
    """UltraChat / no_robots rows (`prompt`, `prompt_id`, `messages`) were refused with "has no column 'completion'
    ... set data.completion_column", even with data.messages_column=messages: the prompt column made every row a
    pair. A chat column with no completion column is the row's chat; a pair row with a chat column stays a pair."""
    chat = [{"role": "user", "content": "reset my pin"}, {"role": "assistant", "content": "your pin is reset"},
            {"role": "user", "content": "thanks"}, {"role": "assistant", "content": "welcome"}]
    rows = [{"prompt": "reset my pin", "prompt_id": "a1", "messages": chat},
            {"prompt": "hi", "prompt_id": "a2", "messages": chat[:2]}]
    for cfg in (DataConfig(), DataConfig(messages_column="messages")):
        split = parse_sft_rows(rows, cfg, "f.jsonl", "train")
        assert [e.completion for e in split.examples] == ["welcome", "your pin is reset"]
        assert [t.content for t in split.examples[0].prompt] == ["reset my pin", "your pin is reset", "thanks"]
    pair = parse_sft_rows([{"prompt": "p", "completion": "c", "messages": chat}], DataConfig(), "f.jsonl", "train")
    assert pair.examples[0].completion == "c"
    # a prompt column alone, a ShareGPT-style chat beside it: the fix names the chat column too
    with pytest.raises(UserError) as info:
        parse_sft_rows([{"prompt": "p", "conversation": chat}], DataConfig(), "f.jsonl", "train")
    assert "has no column 'completion'" in info.value.problem
    assert "or read the chats in 'conversation': data.messages_column=conversation" in info.value.fix


def test_sharegpt_conversations_are_read_as_chats_when_their_column_is_named():
    """ShareGPT rows ({"conversations": [{"from": "human", "value": ...}]}): the error suggested
    data.messages_column=conversations, which then failed "turn 1 ... is not a {role, content} object". from/value
    turns are read as role/content (as TRL's maybe_convert_to_chatml), human -> user, gpt -> assistant."""
    rows = [{"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "reset my pin"},
                               {"from": "gpt", "value": "your pin is reset"}]}]
    with pytest.raises(UserError) as info:
        parse_sft_rows(rows, DataConfig(), "f.jsonl", "train")
    assert "data.messages_column=conversations" in info.value.fix
    split = parse_sft_rows(rows, DataConfig(messages_column="conversations"), "f.jsonl", "train")
    assert split.examples == (Example((Turn("system", "be brief"), Turn("user", "reset my pin")), "your pin is reset"),)
    with pytest.raises(UserError, match="turn 2 has role 'bot'"):
        parse_sft_rows([{"conversations": [{"from": "human", "value": "hi"}, {"from": "bot", "value": "yo"}]}],
                       DataConfig(messages_column="conversations"), "f.jsonl", "train")


def test_a_list_that_is_no_turns_gets_the_fix_of_what_it_is():
    """A prompt (or completion) of [] got the training chat's fix, [user, assistant] turns, which a prompt then
    refuses ('ends with its assistant turn'): each column's fix has the shape that column is read as."""
    from loratune.sft_data import CHAT_SHAPE, COMPLETION_SHAPE, PROMPT_SHAPE

    for row, shape in (({"messages": []}, CHAT_SHAPE), ({"prompt": [], "completion": "b"}, PROMPT_SHAPE),
                       ({"prompt": "a", "completion": []}, COMPLETION_SHAPE)):
        with pytest.raises(UserError) as info:
            parse_sft_rows([_good(row), row], DataConfig(), "f.jsonl", "train")
        assert "is not a list of {role, content} turns" in info.value.problem and info.value.fix == shape
    assert "ending with a user turn" in PROMPT_SHAPE and '"assistant"' not in PROMPT_SHAPE
    assert '"role": "assistant"' in COMPLETION_SHAPE and '"user"' not in COMPLETION_SHAPE


def _good(row: dict) -> dict:
    if "messages" in row:
        return {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
    return {"prompt": "a", "completion": "b"}


def test_files_in_every_format_and_a_carved_validation_split(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_sft_rows(5, seed=1)
    write_jsonl(tmp_path / "train.jsonl", rows)
    (tmp_path / "t.csv").write_text("prompt,completion\n" + "".join(f"{r['prompt']},{r['completion']}\n"
                                                                   for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    for name in ("train.jsonl", "t.csv", "t.parquet"):
        ds = load_sft_dataset(DataConfig(train_file=str(tmp_path / name)), seed=3)
        assert len(ds.train) + len(ds.validation) == len(rows)
        assert len(ds.validation) == 2  # 10% of 20, rounded
        assert "carved a random 10%" in ds.notes[0]
        assert {e.completion for e in ds.train.examples} <= {r["completion"] for r in rows}
    # the share carved, not the one asked: 1% of 20 rows is one row, 5% (it said "1% (1 rows)")
    ds = load_sft_dataset(DataConfig(train_file=str(tmp_path / "train.jsonl"), validation_fraction=0.01), seed=3)
    assert ds.notes[0] == ("no validation split given: carved a random 5% (1 of 20 rows) from train with seed 3 "
                           "(validation_fraction 1%: whole rows, at least one)")
    folder = load_sft_dataset(DataConfig(dataset_name=str(tmp_path)), seed=3)
    assert len(folder.train) == 18  # the folder's train.jsonl, validation carved


def test_a_carved_validation_split_keeps_a_rows_copies_together(tmp_path):
    """The config help and the run record said a carved validation split keeps a text's copies on one side, and
    called it stratified; causal-lm's carving put 6 of the 8 carved rows' copies in train. It now carves as the
    classifier does (data.carve), one class: random, a row's copies (prompt and completion, case and punctuation aside)
    together."""
    import random

    from loratune.config import DataConfig as Cfg
    from loratune.sft_data import check_trainable

    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(40)]
    write_jsonl(tmp_path / "twice.jsonl", rows + [{"prompt": r["prompt"].upper() + "?", "completion": r["completion"]}
                                                  for r in rows])
    for seed in range(10):
        ds = load_sft_dataset(DataConfig(train_file=str(tmp_path / "twice.jsonl")), seed=seed)
        key = lambda e: (e.prompt_text.lower().rstrip("?"), e.completion)
        assert len(ds.validation) == 8 and len(ds.train) == 72, seed
        assert not {key(e) for e in ds.train.examples} & {key(e) for e in ds.validation.examples}, seed
        assert ds.notes == (f"no validation split given: carved a random 10% (8 of 80 rows) from train with seed "
                            f"{seed}",)
    # rows without copies carve as they did (the same rows for the same seed)
    write_jsonl(tmp_path / "once.jsonl", rows)
    ds = load_sft_dataset(DataConfig(train_file=str(tmp_path / "once.jsonl")), seed=5)
    idx = list(range(40))
    random.Random(5).shuffle(idx)
    assert [e.completion for e in ds.validation.examples] == [f"answer {i}" for i in sorted(idx[:4])]
    # a train file of one row's copies: nothing carved, said why
    write_jsonl(tmp_path / "one.jsonl", [{"prompt": "Hi", "completion": "hello"},
                                         {"prompt": "hi!", "completion": "Hello"}])
    with pytest.raises(UserError) as info:
        check_trainable(load_sft_dataset(DataConfig(train_file=str(tmp_path / "one.jsonl"))))
    assert info.value.problem.endswith(
        "validation: 0 rows: no validation file was given and none could be carved from train (a row goes to "
        "validation with its copies, the same prompt and completion case and punctuation aside, within "
        "validation_fraction of the rows, and one stays in train): train has rows that are all copies of one text (a "
        "text's copies go to one side, so they stay in train)")
    # the help says which carving each task gets
    help_ = Cfg.__dataclass_fields__["validation_file"].metadata["help"]
    assert ("stratified by class for labelled data (classification, and causal-lm with label_format=generate), "
            "random for causal-lm's prompt/completion rows") in help_


def test_generated_labels_carve_and_subset_by_class_as_the_help_and_run_record_say(tmp_path):
    """The config help and docs/run-record.md said causal-lm's carving and max_*_samples subsets were random, while
    label_format=generate reads its labelled rows through the classifier's load_dataset: stratified. They say which
    data gets which, and it is so."""
    from pathlib import Path

    from loratune.config import DataConfig as Cfg

    write_jsonl(tmp_path / "train.jsonl", [{"text": f"{lab} text {i}", "label": lab}
                                           for lab, n in (("a", 30), ("b", 10), ("c", 8)) for i in range(n)])
    ds = load_sft_dataset(DataConfig(train_file=str(tmp_path / "train.jsonl"), label_format="generate",
                                     max_train_samples=22, max_eval_samples=3), seed=0)
    assert ds.notes == ("no validation split given: carved a stratified 10% (5 of 48 rows) from train with seed 0",
                        "train: stratified subset of 22 rows (max_train_samples)",
                        "validation: stratified subset of 3 rows (max_eval_samples)")
    assert sorted({e.completion for e in ds.validation.examples}) == ["a", "b", "c"]
    doc = (Path(__file__).resolve().parents[2] / "docs" / "run-record.md").read_text(encoding="utf-8")
    helps = {key: Cfg.__dataclass_fields__[key].metadata["help"] for key in Cfg.__dataclass_fields__}
    for key, verb in (("max_train_samples", "train"), ("max_eval_samples", "validate")):
        said = "prompt/completion rows: a random one; {} labelled rows are stratified"
        assert said.format("label_format=generate's") in helps[key]
        assert f"| `data.{key}` | `null` | {verb} on a stratified subset of this many rows (causal-lm's " + \
            said.format("`label_format: generate`'s") + ") |" in doc
    assert "causal-lm: a random one" not in doc and "(causal-lm: of all rows)" not in doc
    assert "(causal-lm's prompt/completion rows: of all rows)" in helps["validation_fraction"]


def test_no_validation_carved_names_the_carvings_cause_after_max_train_samples(tmp_path):
    """check_trainable read the cause off train after max_train_samples had subset it: a train file of one row's
    copies cut to one row was said to have 'one row'; label_format=generate (stratified by the classifier's carving)
    was given causal-lm's one-class cause ('no text with few enough copies'), or none after a subset. The causes are
    the carving's, from the whole file."""
    from loratune.data import CARVE_CAUSE_ONE_TEXT, CARVE_RULE
    from loratune.sft_data import check_trainable

    write_jsonl(tmp_path / "one.jsonl", [{"prompt": "Hi" + "!" * (i % 3), "completion": "hello"} for i in range(10)])
    for n in (None, 1):
        ds = load_sft_dataset(DataConfig(train_file=str(tmp_path / "one.jsonl"), max_train_samples=n))
        assert len(ds.train) == (n or 10) and ds.uncarved == {"": CARVE_CAUSE_ONE_TEXT}
        with pytest.raises(UserError) as info:
            check_trainable(ds)
        assert info.value.problem.endswith(f"train has {CARVE_CAUSE_ONE_TEXT}")
    write_jsonl(tmp_path / "labelled.jsonl", [{"text": t + "!" * (i % 3), "label": lab}
                                              for lab, t in (("card", "Lost my card"), ("pin", "reset PIN"))
                                              for i in range(10)])
    for n in (None, 3):
        ds = load_sft_dataset(DataConfig(train_file=str(tmp_path / "labelled.jsonl"), label_format="generate",
                                         max_train_samples=n))
        assert len(ds.train) == (n or 20) and len(ds.validation) == 0
        with pytest.raises(UserError) as info:
            check_trainable(ds)
        assert info.value.problem.endswith(f"none could be carved from train (stratified: {CARVE_RULE}): 'card', "
                                           f"'pin': {CARVE_CAUSE_ONE_TEXT}")


def test_classification_rows_are_no_sft_data_and_the_error_says_which_columns_there_are(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "hello", "label": "a"}])
    with pytest.raises(UserError) as info:
        load_sft_dataset(DataConfig(train_file=str(tmp_path / "train.jsonl")))
    assert "(columns: text, label)" in info.value.problem


def test_the_shipped_instruction_demo_is_the_default_data_with_its_prompt_set():
    from loratune.config import EMBEDDED_DATA, EMBEDDED_SFT_DATA, load_config

    cfg = load_config(None, ["task=causal-lm"])
    assert cfg.data.dataset_name == EMBEDDED_SFT_DATA == "embedded:instructions-demo"  # what the record says
    ds = load_sft_dataset(cfg.data, seed=42)
    assert (len(ds.train), len(ds.validation)) == (118, 20)
    assert ds.prompt_set is not None and ds.prompt_set.endswith("instructions/prompt_set.jsonl")
    assert "its prompt set" in ds.notes[-1]
    assert all(e.prompt[0].role == "user" and e.completion for e in ds.train.examples)
    own = load_sft_dataset(DataConfig(dataset_name=EMBEDDED_SFT_DATA, prompt_set="mine.jsonl"), seed=42)
    assert own.prompt_set == "mine.jsonl"  # a prompt set the user names wins
    # the intent demo holds no instruction pairs: refused with both ways out, never read as the instruction demo
    with pytest.raises(UserError) as info:
        load_sft_dataset(DataConfig(dataset_name=EMBEDDED_DATA))
    assert "labelled intent data" in info.value.problem
    assert "label_format=generate" in info.value.fix and EMBEDDED_SFT_DATA in info.value.fix


def test_generated_labels_read_labelled_rows_with_the_classifier_reader(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"lost my card {i}", "label": "card_lost"} for i in range(4)]
                + [{"text": f"change my pin {i}", "label": "pin"} for i in range(4)])
    ds = load_sft_dataset(DataConfig(train_file=str(tmp_path / "train.jsonl"), label_format="generate"), seed=1)
    assert ds.label_space.labels == ("card_lost", "pin")
    assert len(ds.train) + len(ds.validation) == 8 and {e.completion for e in ds.validation.examples} == {
        "card_lost", "pin"}  # stratified carve: one row of each label
    assert ds.train.examples[0].prompt[0].content.split()[:2] in (["lost", "my"], ["change", "my"])
    write_jsonl(tmp_path / "multi.jsonl", [{"text": "a", "label": ["x", "y"]}, {"text": "b", "label": ["y"]}])
    with pytest.raises(UserError, match="multi-label"):
        load_sft_dataset(DataConfig(train_file=str(tmp_path / "multi.jsonl"), label_format="generate"))


@pytest.mark.parametrize("row, said", [
    ({"prompt": "hello \ud83d lost", "completion": "ok"}, "row 1: the user turn of 'prompt' has a lone surrogate"),
    ({"prompt": "hello", "completion": "your \ud83d card"}, "row 1: the completion in 'completion' has a lone surrogate"),
    ({"messages": [{"role": "system", "content": "x\udc00"}, {"role": "user", "content": "u"},
                   {"role": "assistant", "content": "a"}]}, "row 1: the system turn of 'messages' has a lone surrogate"),
])
def test_a_lone_surrogate_in_a_training_row_is_refused_naming_the_row(row, said):
    """It failed the tokenizer with a TypeError traceback (train --dry-run too); now data.check_characters' error."""
    with pytest.raises(UserError) as exc:
        parse_sft_rows([row], DataConfig(), "f.jsonl", "train")
    assert f"data file 'f.jsonl' {said}" in str(exc.value)
    assert "restore its pair" in exc.value.fix


def test_a_study_recorded_before_loss_covers_is_noted_when_its_chats_have_earlier_answers():
    """tune --resume of a study whose trials learnt each chat's last answer only mixed two meanings of val/loss."""
    from loratune.sft_data import EVERY_TURN, LOSS_COVERS_KEY, loss_covers_note

    multi = parse_sft_rows([{"messages": MULTI}], DataConfig(), "f.jsonl", "train").examples
    single = parse_sft_rows([{"messages": MULTI[2:]}], DataConfig(), "f.jsonl", "train").examples
    assert "not comparable" in loss_covers_note({}, multi)
    assert loss_covers_note({LOSS_COVERS_KEY: EVERY_TURN}, multi) is None
    assert loss_covers_note({}, single) is None  # one answer per chat: the same tokens either way


def test_weight_1_on_every_sharegpt_turn_is_read_and_its_prompt_turns_counted_not_learnt(tmp_path):
    """A dataset writing weight 1.0 on every turn (system, human, gpt), which main read, was refused ("has weight 1
    (to be learnt)"); weight 1 on a prompt turn may be a default as much as a request: the chat is read, the prompt
    turns not learnt (loratune learns assistant turns only), and the data notes count them."""
    from loratune.sft_data import load_sft_dataset

    chat = [{"from": "system", "value": "be brief", "weight": 1.0}, {"from": "human", "value": "hi", "weight": 1.0},
            {"from": "gpt", "value": "ok", "weight": 1.0}, {"from": "human", "value": "and?", "weight": 1},
            {"from": "gpt", "value": "done", "weight": True}]
    write_jsonl(tmp_path / "train.jsonl", [{"conversations": chat}] * 3)
    write_jsonl(tmp_path / "validation.jsonl", [{"conversations": chat[:3]}])
    ds = load_sft_dataset(DataConfig(dataset_name=str(tmp_path), messages_column="conversations"))
    assert [t.role for t in ds.train.examples[0].prompt] == ["system", "user", "assistant", "user"]
    assert ds.train.examples[0].completion == "done"
    assert ("train: 9 prompt turn(s) carry weight 1 (to be learnt); loratune learns assistant turns only, these were "
            "not learnt") in ds.notes
    assert "validation: 2 prompt turn(s) carry weight 1" in " ".join(ds.notes)
    # weight 0 on the prompt turns: nothing to say
    write_jsonl(tmp_path / "validation.jsonl", [{"conversations": [{**t, "weight": 0} if t["from"] != "gpt" else t
                                                                   for t in chat[:3]]}])
    ds = load_sft_dataset(DataConfig(dataset_name=str(tmp_path), messages_column="conversations"))
    assert not any(n.startswith("validation:") and "weight" in n for n in ds.notes)


@pytest.mark.parametrize("weight, refused", [
    ("0", True), (0.0, True), (False, True), ("0.0", True), ("false", True),  # not to be learnt: refused
    ("1", False), (1.0, False), (True, False), (None, False), (float("nan"), False), ("", False), (" NaN ", False),
])
def test_a_sharegpt_weight_is_read_as_a_number(weight, refused):
    """The weight was read by truthiness: "0" (a CSV or Parquet cell's text) on an assistant turn read as learn, and
    on a user turn "0" or a pandas NaN was refused as "has weight '0' (to be learnt)". It is a number now: 0 refused on
    an assistant turn, no weight (None, NaN, blank) read as none, and any of them on a user turn accepted."""
    rows = [{"conversations": [{"from": "human", "value": "hi", "weight": weight},
                               {"from": "gpt", "value": "ok", "weight": weight}]}]
    cfg = DataConfig(messages_column="conversations")
    if refused:
        with pytest.raises(UserError) as err:
            parse_sft_rows(rows, cfg, "f.csv", "train")
        assert "assistant turn 2 of column 'conversations' has weight" in err.value.problem
    else:
        assert parse_sft_rows(rows, cfg, "f.csv", "train").examples[0].completion == "ok"
    rows[0]["conversations"][1].pop("weight")  # the user turn's weight alone: never refused
    assert len(parse_sft_rows(rows, cfg, "f.csv", "train").examples) == 1


@pytest.mark.parametrize("weight", ["high", [1], {"w": 1}])
def test_a_sharegpt_weight_that_is_no_number_is_refused(weight, capsys):
    rows = [{"conversations": [{"from": "human", "value": "hi", "weight": weight}, {"from": "gpt", "value": "ok"}]}]
    with pytest.raises(UserError) as err:
        parse_sft_rows(rows, DataConfig(messages_column="conversations"), "f.csv", "train")
    assert f"row 1: user turn 1 of column 'conversations' has weight {weight!r}, not a number" in err.value.problem
    assert "0 (not learnt) or 1 (learnt)" in err.value.fix
