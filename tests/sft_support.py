"""Test helpers for task causal-lm: a word-level tokenizer that needs no download (with and without a
chat template), a toy prompt -> completion task a tiny Llama can learn, and the tiny random-init Llama."""

from __future__ import annotations

import random
from pathlib import Path

from support import FILLERS, INTENTS

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# a Jinja chat template in the style of the Zephyr / Phi-3 ones: role tags, an end-of-turn token
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|> {% endif %}")
# the toy task: the prompt is a customer message, the completion names its intent in words
ANSWERS = {"card_lost": "your card is blocked", "balance": "your balance is shown",
           "transfer": "the transfer is sent", "pin": "your pin is reset"}
TEMPLATE_WORDS = ["###", "User", "Assistant", "System", ":", "reply", "to", "this", "be", "brief"]


def vocab() -> list[str]:
    words = {w for phrases in INTENTS.values() for p in phrases for w in p.split()}
    words |= {w for f in FILLERS for w in f.split()}
    words |= {w for a in ANSWERS.values() for w in a.split()}
    words |= set(INTENTS)  # the label names, for generative classification
    return SPECIALS + sorted(words | set(TEMPLATE_WORDS))


def make_tokenizer(chat_template: bool = True, bos: bool = False):
    """A fast word-level tokenizer (whitespace and punctuation split). bos: prepend <s> to every text
    (like Llama-2's tokenizer), to test that the prefix is added once."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = vocab()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with spaces
    if bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                  eos_token="<|end|>" if chat_template else "</s>",
                                  additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>"]
                                  + ([] if chat_template else ["<|end|>"]))
    if chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


# ChatML as SmolLM2 writes it (a turn ends '<|im_end|>\n', the EOS being '<|im_end|>'); `think`: as Qwen3's, whose
# last assistant turn's content follows an empty '<think>\n\n</think>\n\n' block that the generation prompt lacks
CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                   "{% if think and m['role'] == 'assistant' and loop.last %}<think>\n\n</think>\n\n{% endif %}"
                   "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                   "{% endif %}")


def make_chatml_tokenizer(think: bool = False, split_eos: bool = False):
    """A word-level tokenizer (runs of spaces dropped, line breaks kept as tokens) with a ChatML chat template:
    SmolLM2's, or with `think` Qwen3's empty think block before the answer ('<think>' an added token that is not
    special, as in Qwen3's tokenizer). `split_eos`: special tokens' text is tokenised as text (split_special_tokens),
    so '<|im_end|>' is written '<', '|', 'im_end', '|', '>' and never as the EOS id."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import AddedToken, PreTrainedTokenizerFast

    words = list(dict.fromkeys(vocab() + ["\n", "\n\n", "<|im_start|>", "<|im_end|>", "assistant", "user", "system"]
                               + (["<", "|", ">", "im_start", "im_end"] if split_eos else [])))
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r" +"), "removed"),
                                                  pre_tokenizers.Split(Regex(r"\n+|\w+|[^\w\s]"), "isolated")])
    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"], split_special_tokens=split_eos)
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    tok.chat_template = CHATML_TEMPLATE.replace("think and", "true and" if think else "false and")
    return tok


def make_sft_rows(n_per_label: int, seed: int, labels=None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for label in labels or INTENTS:
        for _ in range(n_per_label):
            prompt = f"{rng.choice(FILLERS)} {rng.choice(INTENTS[label])} {rng.choice(FILLERS)}"
            rows.append({"prompt": prompt, "completion": ANSWERS[label]})
    rng.shuffle(rows)
    return rows


def save_tiny_llama_lm(folder: Path, chat_template: bool = True, seed: int = 0, tokenizer=None) -> str:
    """A random-init LlamaForCausalLM (hidden 32, 2 layers) with its tokenizer (make_tokenizer's, or `tokenizer`),
    saved to `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer if tokenizer is not None else make_tokenizer(chat_template)
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return str(folder)


def tiny_sft_inputs(folder: Path, val_per_label: int = 2) -> tuple[str, Path]:
    """A tiny Llama (`folder`/lm) and an SFT data folder (`folder`/data: 6 train and `val_per_label` validation rows
    per intent) for a causal-LM run: (model path, data folder)."""
    from support import write_jsonl

    model = save_tiny_llama_lm(folder / "lm")
    data = folder / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_sft_rows(6, seed=1))
    write_jsonl(data / "validation.jsonl", make_sft_rows(val_per_label, seed=2))
    return model, data
