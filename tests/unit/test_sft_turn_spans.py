"""A chat's earlier assistant turns found in its prompt rendered once (sft_data.learn_earlier_texts by marks, linear in
the turns) give what rendering every prefix gave (the oracle below, the algorithm before: its renders grew with the
square of the turns): the same texts, so the same ids, labels, spans and notes, on random chats of several templates
and in the three row formats (messages, ShareGPT conversations, UltraChat's prompt beside its messages). The same
wherever a template writes every turn before an answer the same whether or not turns follow it; where it writes such a
turn otherwise in the whole chat (TRL's gemma4_v5, lfm2_2_5, glm4moe, muse_glimmer below), the answer is learnt as the
whole chat writes it where every prefix rendered left it unlearnt."""

from __future__ import annotations

import random

import pytest

from loratune import sft_data
from loratune.config import DataConfig
from loratune.errors import UserError
from loratune.sft_data import (MARK, Renderer, earlier_answers, encode_sft, end_texts, learn_earlier_texts,
                               parse_sft_rows, strip_turns, turn_layout)

from sft_support import CHATML_TEMPLATE, make_chatml_tokenizer, make_tokenizer


def oracle_texts(renderer, example, *_):
    """learn_earlier_texts as it was: every earlier answer's prefix rendered (with the generation prompt), and the
    chat through it. One change: a prefix the template refuses inside a chat it writes whole leaves the chat's earlier
    answers unlearnt (None) where it refused the run (test_a_chat_whose_prefix_the_template_refuses_...)."""
    turns = example.prompt
    answers = earlier_answers(turns)
    if not example.learn_earlier or not answers or renderer.mode == "none":
        return None
    full = renderer.prompt(turns)
    out, done = [], ""
    for i in answers:
        try:
            head = renderer.prompt(turns[:i])
            answer = renderer.completion(turns[:i], turns[i].content)
        except UserError:
            return None
        if not head.startswith(done):
            return None
        out += [head[len(done):], answer]
        done = head + answer
    return out + [full[len(done):]] if full.startswith(done) else None


CHATML_BODY = CHATML_TEMPLATE.replace("think and", "false and")
# templates: name -> (tokenizer, the least share of rows whose earlier answers are found by marks: None, the template
# does not write chats turn by turn (turn_layout finds no layout), so every row's prefixes are rendered)
TEMPLATES = {
    "chatml": (make_chatml_tokenizer, 0.8),
    "chatml-split-eos": (lambda: make_chatml_tokenizer(split_eos=True), 0.8),
    "tags": (lambda: make_tokenizer(chat_template=True), 0.8),
    # Qwen3's: the last answer after an empty think block, the earlier ones without (never learnt: the prefixes path)
    "think": (lambda: make_chatml_tokenizer(think=True), None),
    # assistant_only_loss's {% generation %} block around every answer
    "generation": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
                   "{% generation %}{{ m['content'] }}<|im_end|>\n{% endgeneration %}{% else %}{{ m['content'] }}"
                   "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
                   0.8),
    # Llama-2's: contents trimmed (a row whose answer has spaces around it is found by prefixes), an answer after a
    # space, no generation prompt, no system turn
    "trim": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% elif m['role'] == 'user' %}"
             "[INST] {{ m['content'] | trim }} [/INST]{% else %} {{ m['content'] | trim }} {{ eos_token }}{% endif %}"
             "{% endfor %}", 0.25),
    # DeepSeek-R1's: an answer's text after '</think>' only
    "think-split": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% set c = m['content'] %}"
                    "{% if m['role'] == 'assistant' and '</think>' in c %}{% set c = c.split('</think>')[-1] %}"
                    "{% endif %}{{ c }}<|im_end|>\n{% endfor %}"
                    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", 0.25),
    # an end of text after the last turn only
    "last-eos": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% if loop.last and not add_generation_prompt %}</s>{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", None),
}
WORDS = ["your", "pin", "is", "reset", "card", "lost", "my", "balance", "!", "\n", "\n\n", " ", "  ", "<|im_end|>",
         "</think>", "<|end|>", "assistant", "user", "im_end", "0"]


def tokenizer(name):
    make, _ = TEMPLATES[name]
    if callable(make):
        return make()
    tok = make_chatml_tokenizer()
    tok.chat_template = make
    return tok


def content(rng, empty_ok):
    if empty_ok and rng.random() < 0.05:
        return ""
    text = "".join(rng.choice(WORDS) + rng.choice(["", " ", " ", " "]) for _ in range(rng.randint(1, 8)))
    if rng.random() < 0.01:  # the mark's character: the row's prefixes are rendered
        text += MARK[0]
    return text if rng.random() < 0.5 else " ".join(text.split())


def chat(rng):
    """A random chat that parse_sft_rows reads: a system turn or none, turns of random roles (user turns in a row, an
    opening answer), ending with a user turn and the answer."""
    turns = [{"role": "system", "content": content(rng, True)}] if rng.random() < 0.2 else []
    for _ in range(rng.randint(0, 10)):
        turns.append({"role": rng.choice(["user", "assistant", "assistant", "user", "system"]
                                         if rng.random() < 0.1 else ["user", "assistant"]),
                      "content": content(rng, True)})
    turns += [{"role": "user", "content": content(rng, False) + " lost"},
              {"role": "assistant", "content": content(rng, False) + " reset"}]
    return turns


def rows(rng, n):
    """n random chats in each row format, with its DataConfig."""
    chats = [chat(rng) for _ in range(n)]
    sharegpt = {"user": "human", "assistant": "gpt", "system": "system"}
    return [([{"messages": c} for c in chats], DataConfig()),
            ([{"conversations": [{"from": sharegpt[t["role"]], "value": t["content"]} for t in c]} for c in chats],
             DataConfig(messages_column="conversations")),
            ([{"prompt": c[0]["content"], "prompt_id": "x", "messages": c} for c in chats], DataConfig())]


def encoded(enc):
    return (enc.ids, enc.prompt_lens.tolist(), enc.earlier, enc.earlier_unlearnt, enc.truncated, enc.end_stripped,
            [enc.labels(i) for i in range(len(enc))])


def encode_or_error(tok, r, examples, max_length):
    try:
        return encoded(encode_sft(tok, r, examples, max_length))
    except UserError as exc:
        return exc.problem, exc.fix


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_earlier_turns_found_in_one_render_are_the_texts_every_prefix_rendered_gave(name, monkeypatch):
    rng = random.Random(sorted(TEMPLATES).index(name))
    tok = tokenizer(name)
    for choice in ("auto", "plain") if name in ("chatml", "tags") else ("auto",):
        r = Renderer.for_tokenizer(tok, choice)
        layout = turn_layout(r)
        least = 0.8 if choice == "plain" else TEMPLATES[name][1]
        assert (layout is not None) == (least is not None)
        ends = end_texts(tok, r)
        by_marks = []  # per row with earlier answers: whether they were found by marks
        for row_list, cfg in rows(rng, 40):
            examples = parse_sft_rows(row_list, cfg, "f.jsonl", "train").examples
            for e in examples:  # each row's texts, alone
                stripped = strip_turns(e, ends)
                try:
                    expected = oracle_texts(r, stripped)
                except UserError as exc:
                    assert "refuses" in exc.problem
                    with pytest.raises(UserError, match="refuses"):
                        learn_earlier_texts(r, stripped)
                    continue
                assert learn_earlier_texts(r, stripped) == expected, stripped
                answers = earlier_answers(stripped.prompt)
                if answers and layout:
                    by_marks.append(sft_data._texts_by_marks(r, stripped.prompt, answers, None, layout) is not None)
            for max_length in (4096, 24):  # the rows encoded: ids, labels, spans and notes, with and without cutting
                new = encode_or_error(tok, r, examples, max_length)
                with monkeypatch.context() as m:
                    m.setattr(sft_data, "learn_earlier_texts", oracle_texts)
                    assert encode_or_error(tok, r, examples, max_length) == new
        # a template that writes chats turn by turn finds rows' answers by marks (not those with a mark's character
        # in a turn, nor where it changes the content: trim's spaces, think-split's '</think>')
        assert least is None or sum(by_marks) >= least * len(by_marks), (sum(by_marks), len(by_marks))


def test_turn_layout_takes_the_lead_and_end_of_an_answer_from_answer_lead_and_turn_end(monkeypatch):
    """One rule, one place: what a template writes around an answer's content is found once (answer_lead, which
    answer_prefix tokenises; turn_end), and turn_layout reads it there, not with a search of its own: a change of
    either rule moves the layout with it."""
    tok = tokenizer("tags")
    r = Renderer.for_tokenizer(tok, "auto")
    layout = turn_layout(r)
    assert (layout.lead, layout.end) == (sft_data.answer_lead(r), sft_data.turn_end(r))
    assert tok(layout.lead, add_special_tokens=False)["input_ids"][:len(sft_data.answer_prefix(tok, r))] \
        == sft_data.answer_prefix(tok, r)
    called = []
    for name in ("answer_lead", "turn_end"):
        real = getattr(sft_data, name)
        monkeypatch.setattr(sft_data, name, lambda renderer, real=real, name=name: called.append(name) or real(renderer))
    assert turn_layout(r) == layout and sorted(set(called)) == ["answer_lead", "turn_end"]
    # a probe's completion the found lead and end do not write around its content: no layout (every prefix rendered)
    monkeypatch.setattr(sft_data, "turn_end", lambda renderer: "<|other|>")
    assert turn_layout(r) is None


def trl_tokenizer(name):
    """The ChatML test tokenizer with one of TRL's chat templates (trl/chat_templates: real templates)."""
    trl = pytest.importorskip("trl")
    from pathlib import Path

    tok = make_chatml_tokenizer()
    tok.chat_template = (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text()
    return tok


@pytest.mark.parametrize("name", ["qwen3_8", "qwen3_6_training", "qwen3_5_think_training"])
def test_a_chat_whose_prefix_the_template_refuses_is_trained_whatever_its_contents(name):
    """Qwen3.5's and later templates refuse a chat with no user turn ('No user query found in messages') and write a
    chat (system, assistant, user, assistant) whole. An earlier answer found by marks renders no prefix, so its row
    trained, while a row of the same shape that every prefix was rendered for ('\\nHi\\n', trimmed by the template;
    '<think>x</think>Hi') rendered (system) alone and the run was refused: whether a run trained depended on a
    greeting's text. Now no row of the shape is refused: it learns its last answer, and its earlier answer is learnt or
    counted unlearnt in the data notes; every prefix rendered, it is counted unlearnt whatever its content."""
    from loratune.sft_data import encoding_notes

    tok = trl_tokenizer(name)
    r = Renderer.for_tokenizer(tok, "auto")
    assert turn_layout(r) is not None
    greetings = ["Hi, how can I help?", "\nHi, how can I help?\n", "<think>x</think>Hi"]
    for greeting in greetings:
        chat = [("system", "You help."), ("assistant", greeting), ("user", "my card"), ("assistant", "your pin is reset")]
        examples = parse_sft_rows([{"messages": [{"role": a, "content": b} for a, b in chat]}], DataConfig(),
                                  "f.jsonl", "train").examples
        enc = encode_sft(tok, r, examples, 4096)
        assert "pin is reset" in tok.decode([t for t in enc.labels(0) if t >= 0]), greeting
        learnt, unlearnt = len(enc.earlier[0]), sum(enc.earlier_unlearnt.values())
        assert learnt + unlearnt == 1 and enc.earlier_unlearnt["opening"] == 0, (greeting, enc.earlier_unlearnt)
        assert len(encoding_notes("train", enc, r)) == unlearnt
        assert learn_earlier_texts(r, strip_turns(examples[0], end_texts(tok, r)), None, None) is None
    # the whole chat refused is still refused, by either path
    bare = parse_sft_rows([{"messages": [{"role": "system", "content": "You help."},
                                         {"role": "assistant", "content": "Hi"},
                                         {"role": "assistant", "content": "your pin"}]}], DataConfig(), "f.jsonl",
                          "train").examples
    with pytest.raises(UserError, match="No user query"):
        encode_sft(tok, r, bare, 4096)


# TRL templates that write a turn before an earlier answer otherwise in the whole chat than in the answer's prefix
WRITTEN_OTHERWISE_BEFORE = {
    # an empty opening answer: dropped from the whole chat, kept in the prefix
    "gemma4_v5": [("assistant", ""), ("assistant", "your pin"), ("user", "my card"), ("assistant", "is reset")],
    # an opening answer's think text: dropped before a later user turn, kept in the prefix (no user turn after it)
    "lfm2_2_5": [("assistant", "plan</think>your pin"), ("assistant", "is reset"), ("user", "my card"),
                 ("assistant", "is lost")],
    "glm4moe": [("assistant", "plan</think>your pin"), ("assistant", "is reset"), ("user", "my card"),
                ("assistant", "is lost")],
    # the default system message: only in a chat with no system turn (the prefix has none, the whole chat has one)
    "muse_glimmer": [("user", "my card"), ("assistant", "your pin"), ("system", "be brief"), ("user", "lost"),
                     ("assistant", "is reset")],
}


@pytest.mark.parametrize("name", sorted(WRITTEN_OTHERWISE_BEFORE))
def test_an_earlier_answer_after_a_turn_the_whole_chat_writes_otherwise_is_learnt_as_the_whole_chat_writes_it(name):
    """Where the template writes a turn before an earlier answer otherwise in the whole chat than in the answer's
    prefix, rendering every prefix found no prefix of the whole chat and left the answer unlearnt ('template'); marks
    learn it as the whole chat writes it, which is as the template writes it last (lead, content, end after the
    generation prompt), as TRL's assistant_only_loss learns it on the whole chat: the data notes count no 'template'
    turn (they name only the opening answer where there is one)."""
    from loratune.sft_data import encoding_notes

    tok = trl_tokenizer(name)
    r = Renderer.for_tokenizer(tok, "auto")
    layout = turn_layout(r)
    assert layout is not None
    chat = WRITTEN_OTHERWISE_BEFORE[name]
    example = parse_sft_rows([{"messages": [{"role": a, "content": b} for a, b in chat]}], DataConfig(), "f.jsonl",
                             "train").examples[0]
    turns = example.prompt
    (i,) = earlier_answers(turns)
    whole = r.prompt(turns)
    assert not whole.startswith(r.prompt(turns[:i]))  # the text before the answer: not its prefix's
    texts = learn_earlier_texts(r, example)
    assert "".join(texts) == whole and texts[1] == layout.lead + turns[i].content + layout.end
    assert learn_earlier_texts(r, example, whole, None) is None  # every prefix rendered: unlearnt
    enc = encode_sft(tok, r, [example], 4096)
    assert len(enc.earlier[0]) == 1 and enc.earlier_unlearnt["template"] == 0
    (a, b), = enc.earlier[0]
    assert tok.decode(enc.ids[0][a:b]) == tok.decode(tok(texts[1], add_special_tokens=False)["input_ids"])
    opening = turns[0].role == "assistant"
    assert enc.earlier_unlearnt["opening"] == opening
    assert encoding_notes("train", enc, r) == (
        ["train: 1 assistant turn(s) before the last open their chats, with no prompt before them: not learnt "
         "(nothing asks for them)"] if opening else [])
