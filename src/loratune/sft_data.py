"""SFT data (task causal-lm): prompt/completion or chat rows -> token ids with a loss mask.

Reads JSONL / CSV / Parquet through `data.read_rows`. A row is either
- `prompt` + `completion` columns (data.prompt_column / completion_column): strings, or TRL's
  conversational form (a list of {role, content} as the prompt, a single assistant turn as the completion);
- a chat (data.messages_column, default `messages`): a list of {role, content} whose last turn is the
  assistant answer generated at evaluation, every turn before it the prompt; every assistant turn is learnt
  (TRL's assistant_only_loss: learn_earlier_texts), the earlier ones inside the prompt's tokens.

Rendering (data.chat_template):
- `auto`: the tokenizer's chat template when it has one, else `plain`;
- `plain`: PLAIN_TEMPLATE below: each turn `### User:\\n<content>\\n\\n` (System, User, Assistant),
  then `### Assistant:\\n` and the completion, then the tokenizer's EOS token;
- `none`: prompt and completion joined as written, then EOS (TRL's "standard" prompt-completion
  format); a chat with more than one prompt turn is refused.

Tokenisation: the prompt and the completion are tokenised separately (no special tokens; the
tokenizer's own BOS prefix is added once) and concatenated, so the prompt/completion boundary is
exact. labels = -100 on every prompt token: the loss is on completion tokens only (and the EOS that
ends them), and on a chat's earlier assistant turns (spans of the prompt's tokens, when its pieces tokenise as the whole does). A pair longer than model.max_length is truncated keeping the completion: the prompt loses
its beginning first, down to half of max_length; only then is the completion cut at its end.

Knows nothing of models or training. Every problem a user can cause raises a `UserError` naming the
file, the row, the columns found and the fix.
"""

from __future__ import annotations

from collections import Counter
import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from loratune.config import EMBEDDED_DATA, EMBEDDED_SFT_DATA, DataConfig
from loratune.data import (CARVE_RULE, CARVED, SPLIT_NAMES, Dataset, LabelSpace, RowFile, Split, carve, carved_note,
                           check_characters, empty_text_problems, find_split_file, load_dataset, read_rows, said_causes,
                           text_key, uncarved_classes)
from loratune.errors import UserError
from loratune.metrics import LABEL_TRAILING_PUNCTUATION, generated_label_problems

ROLES = ("system", "user", "assistant")
# ShareGPT turns ({"from": "human", "value": "..."}): read as {role, content} (TRL's maybe_convert_to_chatml renames
# the keys), their speakers named as ShareGPT writes them (human, gpt) or as ROLES
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}
# The plain template: what a prompt looks like when the tokenizer has no chat template (or chat_template=plain).
PLAIN_TEMPLATE = {"turn": "### {role}:\n{content}\n\n", "generation": "### Assistant:\n",
                  "roles": {"system": "System", "user": "User", "assistant": "Assistant"}}
# Column names people give prompts, completions and chats, most likely first (for the fix of a missing column).
PROMPT_NAMES = ("prompt", "instruction", "question", "input", "query", "text")
COMPLETION_NAMES = ("completion", "response", "output", "answer", "target", "reference")
MESSAGES_NAMES = ("messages", "conversations", "conversation", "chat", "dialog")
# tool calling (TRL's `tools` column, an assistant turn's `tool_calls`, a `tool` turn): loratune renders turns as
# {role, content} only, so tools and calls were dropped and the call learnt as an empty answer; refused with this fix
TOOLS_COLUMN = "tools"
TOOLS_FIX = ("drop the tool-calling rows (loratune trains text turns only: the tools and calls would not reach the "
             "chat template), or train them with TRL's SFTTrainer, which passes them to it")
# a ShareGPT turn's weight (axolotl: weight 0, a turn not learnt): loratune learns every assistant turn of a chat and
# never a prompt turn. An assistant turn marked not to be learnt is refused rather than learnt silently; a system or
# user turn's weight 0 is what loratune does anyway, and its weight 1 (datasets write it on every turn, a default as
# much as a request) is read, the turn not learnt, and counted in the data notes (PROMPT_WEIGHT_NOTE). The weight is
# a number: 0 / 1, 0.0 / 1.0, true / false, or their text ("0" from a CSV or Parquet cell); null, NaN or a blank cell
# is no weight; anything else is refused (WEIGHT_NUMBER_FIX)
WEIGHT_KEY = "weight"
WEIGHT_FIX = ("drop the turn's weight key to learn it, or end the chat before it (a chat's turns after its last "
              "assistant turn are not part of it): loratune cannot leave one assistant turn of a chat unlearnt")
WEIGHT_NUMBER_FIX = "write the turn's weight as 0 (not learnt) or 1 (learnt), or drop the weight key"
PROMPT_WEIGHT_NOTE = ("{split}: {n} prompt turn(s) carry {key} 1 (to be learnt); loratune learns assistant turns only, "
                      "these were not learnt")
IGNORE = -100  # the label torch's cross-entropy skips: prompt tokens and padding
# The fix when the tokenizer's own chat template refuses a chat (a system turn, roles that do not alternate).
CHAT_TEMPLATE_FIX = ("merge the system turn into the user turn (and make user/assistant turns alternate), "
                     "or chat_template=plain to write the chats with loratune's plain template")


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    # a prompt turn whose weight asks for it to be learnt (WEIGHT_KEY 1): read, not learnt, counted (prompt_weight_note)
    weighted: bool = field(default=False, compare=False, repr=False)


@dataclass(frozen=True)
class Example:
    """One training pair: the prompt turns and the completion (the assistant answer) that is learnt. `learn_earlier`: a
    chat's row, whose earlier assistant turns in `prompt` are learnt too (as TRL's assistant_only_loss); generation and
    evaluation still answer the last turn from the turns before it."""

    prompt: tuple[Turn, ...]
    completion: str
    learn_earlier: bool = field(default=False, compare=False)

    @property
    def prompt_text(self) -> str:
        """The prompt as a person reads it (its turns' contents)."""
        return "\n".join(t.content for t in self.prompt)

    @property
    def asked_text(self) -> str:
        """The prompt without its system turns (asked_text)."""
        return asked_text(self.prompt)


def asked_text(turns: "str | tuple[Turn, ...]") -> str:
    """What a prompt asks: its turns' contents but the system turns' (a text prompt is all asked). A held-out prompt
    copying a training chat's question copies this, the system prompt every chat shares aside."""
    return turns if isinstance(turns, str) else "\n".join(t.content for t in turns if t.role != "system")


@dataclass(frozen=True)
class SFTSplit:
    name: str
    examples: tuple[Example, ...]
    source: str

    def __len__(self) -> int:
        return len(self.examples)

    def subset(self, indices: list[int], name: str | None = None, source: str | None = None) -> "SFTSplit":
        return SFTSplit(name or self.name, tuple(self.examples[i] for i in indices), source or self.source)

    def label_counts(self) -> Counter:
        """Rows per completion: generative classification's per-class rows (a completion is its row's label)."""
        return Counter(e.completion for e in self.examples)


@dataclass(frozen=True)
class SFTDataset:
    train: SFTSplit
    validation: SFTSplit
    test: SFTSplit | None
    notes: tuple[str, ...] = ()
    label_space: LabelSpace | None = None  # generative classification: the labels a completion may name
    prompt_set: str | None = None  # data.prompt_set, or the shipped demo's own when training on the demo
    prepared_from: DataConfig | None = field(default=None, compare=False, repr=False)  # as data.Dataset's
    prepared_seed: int | None = field(default=None, compare=False, repr=False)  # as data.Dataset's
    uncarved: dict[str, str | None] = field(default_factory=dict)  # as data.Dataset's; causal-lm's one class is ''
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)  # as data.Dataset's (generative classification)

    @property
    def generates_labels(self) -> bool:
        return self.label_space is not None

    def splits(self) -> dict[str, SFTSplit]:
        out = {"train": self.train, "validation": self.validation}
        if self.test is not None:
            out["test"] = self.test
        return out


# ---------------------------------------------------------------------------------------------
# reading rows


# instruction/chat files, as their read errors describe them
SFT_ROWS = RowFile("data file", "data.train_file / dataset_name", "prompt/completion pairs or chats",
                   '{"prompt": "...", "completion": "..."}')


def plain_cell(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value  # numpy arrays from parquet


# how a list of turns is written, by what it ends with: a training chat ends with the answer it learns, a prompt
# (a prompt/completion row's, the prompt set's) with the user turn it is answered from
CHAT_SHAPE = 'write a chat as [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
PROMPT_SHAPE = ('write the prompt as a text, or as turns ending with a user turn: '
                '[{"role": "system", "content": "..."}, {"role": "user", "content": "..."}] (the system turn optional)')
COMPLETION_SHAPE = 'write the completion as a text, or as one assistant turn: [{"role": "assistant", "content": "..."}]'


def read_turns(value: Any, where: str, column: str, shape: str = CHAT_SHAPE) -> tuple[Turn, ...]:
    """`value` as turns; `shape` is the fix of a value that is no list of turns (CHAT_SHAPE, PROMPT_SHAPE, COMPLETION_SHAPE)."""
    value = plain_cell(value)
    if not isinstance(value, (list, tuple)) or not value:
        raise UserError(f"{where}: column '{column}' is not a list of {{role, content}} turns", shape)
    turns = []
    for i, t in enumerate(value):
        t = _sharegpt(plain_cell(t))
        if isinstance(t, dict) and (_given(t.get("tool_calls")) or t.get("role") == "tool"):
            raise UserError(f"{where}: turn {i + 1} of column '{column}' is a tool "
                            + ("call (tool_calls)" if _given(t.get("tool_calls")) else "result (role 'tool')")
                            + ", and tool calling is not trained", TOOLS_FIX)
        if not isinstance(t, dict) or "role" not in t or "content" not in t:
            raise UserError(f"{where}: turn {i + 1} of column '{column}' is not a {{role, content}} object",
                            'write each turn as {"role": "user", "content": "..."} (or ShareGPT\'s '
                            '{"from": "human", "value": "..."})')
        if t["role"] not in ROLES:
            raise UserError(f"{where}: turn {i + 1} has role '{t['role']}'", f"use one of {', '.join(ROLES)}")
        weight = turn_weight(t.get(WEIGHT_KEY), f"{where}: {t['role']} turn {i + 1} of column '{column}'")
        if t["role"] == "assistant" and weight == 0:
            raise UserError(f"{where}: assistant turn {i + 1} of column '{column}' has {WEIGHT_KEY} {t[WEIGHT_KEY]!r} (not to be "
                            "learnt), and loratune learns every assistant turn of a chat", WEIGHT_FIX)
        turns.append(Turn(str(t["role"]), _content(t["content"], f"{where}: turn {i + 1} of column '{column}'"),
                          weighted=t["role"] != "assistant" and bool(weight)))
    return tuple(turns)


def turn_weight(value: Any, where: str) -> float | None:
    """A turn's weight as a number (WEIGHT_KEY): None where it has none (null, NaN, a blank cell); a value that is
    no number is refused, naming the turn (`where`)."""
    value = plain_cell(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "nan", "null", "none"):
            return None
        value = {"true": 1.0, "false": 0.0}.get(text, text)
    if value is None:
        return None
    try:
        weight = float(value)
    except (TypeError, ValueError):
        if type(value).__name__ == "NAType":  # pandas' missing value
            return None
        raise UserError(f"{where} has {WEIGHT_KEY} {value!r}, not a number", WEIGHT_NUMBER_FIX) from None
    return None if math.isnan(weight) else weight


def prompt_weight_note(split: SFTSplit) -> list[str]:
    """The data note of the split's prompt turns that carry weight 1 (PROMPT_WEIGHT_NOTE), read and not learnt."""
    n = sum(t.weighted for e in split.examples for t in e.prompt)
    return [PROMPT_WEIGHT_NOTE.format(split=split.name, n=n, key=WEIGHT_KEY)] if n else []


def _sharegpt(turn: Any) -> Any:
    """A ShareGPT turn {from, value} as a {role, content} one (SHAREGPT_ROLES; a speaker it does not name is kept, and
    refused as a role); any other turn as it is."""
    if not isinstance(turn, dict) or "role" in turn or "content" in turn or not {"from", "value"} <= turn.keys():
        return turn
    rest = {k: v for k, v in turn.items() if k not in ("from", "value")}
    return {**rest, "role": SHAREGPT_ROLES.get(str(turn["from"]).lower(), turn["from"]), "content": turn["value"]}


def _given(value: Any) -> bool:
    """Whether a tools / tool_calls cell holds something (a list, or its JSON text), not null or empty."""
    value = plain_cell(value)
    return bool(value.strip() not in ("", "[]", "null") if isinstance(value, str) else value)


def _content(value: Any, where: str) -> str:
    """A turn's content as text: a string, or a list of parts [{"type": "text", "text": "..."}] joined as
    transformers' chat templates and TRL read them. Anything else (a dict, a number, an image part) was trained on
    as its Python repr, so it is refused."""
    value = plain_cell(value)
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, (list, tuple)):
        parts = [plain_cell(p) for p in value]
        if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
            return "".join(p["text"] for p in parts)
        bad = next(p for p in parts if not (isinstance(p, dict) and p.get("type") == "text"
                                            and isinstance(p.get("text"), str)))
        raise UserError(f"{where} has a content part {bad!r:.60}, not a text part",
                        'write the content as a string, or as text parts [{"type": "text", "text": "..."}] '
                        "(only text is learnt)")
    raise UserError(f"{where} has a content of {value!r:.60}, not a string",
                    'write the content as a string, e.g. {"role": "user", "content": "..."}')


def _text(value: Any, where: str, column: str) -> str:
    """A prompt or completion cell as text: a number or object would be trained on as its str(), as data.py
    refuses for a classifier's text."""
    if not isinstance(value, str):
        raise UserError(f"{where} has a '{column}' of {value!r:.60}, not a string",
                        f'write it as a string (or a list of {{role, content}} turns), e.g. {{"{column}": "..."}}')
    return value


def _guess(cols: list[str], names: tuple[str, ...]) -> str | None:
    lower = {str(c).lower(): str(c) for c in cols}
    return next((lower[n] for n in names if n in lower), None)


def no_prompt(where: str, column: str) -> UserError:
    """The refusal of a row with no prompt text (a blank prompt, turns of blanks, a chat with nothing but system
    text before its answer): an empty prompt teaches nothing."""
    return UserError(f"{where} has no prompt text in column '{column}'",
                     "fill in the prompt (the user turn before the answer) or drop the row")


def _example(row: dict, cfg: DataConfig, mode: str, where: str) -> Example:
    if _given(row.get(TOOLS_COLUMN)):
        raise UserError(f"{where} has tools in column '{TOOLS_COLUMN}', and tool calling is not trained", TOOLS_FIX)
    if mode == "chat":
        turns = read_turns(row.get(cfg.messages_column), where, cfg.messages_column)
        if turns[-1].role != "assistant" or len(turns) < 2:
            raise UserError(f"{where}: the chat in '{cfg.messages_column}' does not end with an assistant turn "
                            "after at least one prompt turn", "end every chat with the assistant answer to learn")
        # as a prompt/completion row: an empty answer would teach only the end-of-turn token, an empty prompt nothing
        if not turns[-1].content.strip():
            raise UserError(f"{where}: the chat's last assistant turn in '{cfg.messages_column}' is empty",
                            "fill in the answer to learn or drop the row")
        if not any(t.content.strip() for t in turns[:-1] if t.role != "system"):
            raise no_prompt(where, cfg.messages_column)
        return _characters(Example(turns[:-1], turns[-1].content, learn_earlier=True), where, cfg.messages_column)
    prompt, completion = plain_cell(row.get(cfg.prompt_column)), plain_cell(row.get(cfg.completion_column))
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise no_prompt(where, cfg.prompt_column)
    if isinstance(completion, (list, tuple)):  # TRL conversational: [{"role": "assistant", "content": ...}]
        turns = read_turns(completion, where, cfg.completion_column, COMPLETION_SHAPE)
        # the completion is one assistant answer (a string everywhere after: the prompt set's reference, the
        # plain/none templates): several turns were glued with no separator and a user turn was learnt as the
        # answer, so anything but one assistant turn is refused (rendering them would need a turn-aware completion)
        if len(turns) != 1 or turns[0].role != "assistant":
            roles = ", ".join(t.role for t in turns)
            raise UserError(f"{where}: column '{cfg.completion_column}' has the turns ({roles}); the completion "
                            "must be a single assistant turn",
                            f"keep one assistant turn in '{cfg.completion_column}' and move the turns before it "
                            f"into '{cfg.prompt_column}' (or write the row as a chat in '{cfg.messages_column}', "
                            "whose last assistant turn is learnt)")
        completion = turns[0].content
    if completion is None or (isinstance(completion, str) and not completion.strip()):
        raise UserError(f"{where} has no completion in column '{cfg.completion_column}'",
                        "fill in the completion or drop the row")
    completion = _text(completion, where, cfg.completion_column)
    if not completion.strip():  # text parts that join to nothing
        raise UserError(f"{where} has no completion in column '{cfg.completion_column}'",
                        "fill in the completion or drop the row")
    turns = read_turns(prompt, where, cfg.prompt_column, PROMPT_SHAPE) if isinstance(prompt, (list, tuple)) \
        else (Turn("user", _text(prompt, where, cfg.prompt_column)),)
    if not any(t.content.strip() for t in turns if t.role != "system"):  # turns of blanks: as a blank text prompt
        raise no_prompt(where, cfg.prompt_column)
    return _characters(Example(turns, completion), where, cfg.prompt_column, cfg.completion_column)


def _characters(example: Example, where: str, prompt_column: str, completion_column: str | None = None) -> Example:
    """The example, when every text in it can be written and tokenized (data.check_characters: a lone surrogate,
    which failed the tokenizer with a TypeError traceback, is refused naming the row and the column)."""
    for t in example.prompt:
        check_characters(t.content, f"{where}: the {t.role} turn of '{prompt_column}'")
    check_characters(example.completion, f"{where}: the completion in '{completion_column or prompt_column}'")
    return example


# the formats a row can be read in: a prompt/completion pair (its prompt or completion column present) or a chat
FORMAT_NAMES = {"pair": "a prompt/completion row", "chat": "a chat row"}


def _row_formats(row: dict[str, Any], cfg: DataConfig) -> tuple[str, ...]:
    """The formats `row` has columns for, pair first (row 1's first is the file's format: a pair row may carry a
    chat column beside it); none: neither column. A prompt column beside the chat column and no completion column
    is the chat's (UltraChat's and no_robots' rows: `prompt`, `prompt_id`, `messages`), so such a row is a chat.
    The one rule that reads a row's format, for row 1 and each after."""
    chat = cfg.messages_column in row
    pair = cfg.completion_column in row or (cfg.prompt_column in row and not chat)
    return tuple(f for f, has in (("pair", pair), ("chat", chat)) if has)


def _same_format(row: dict[str, Any], cfg: DataConfig, mode: str, source: str, n: int) -> dict[str, Any]:
    """The row, when it can be read in the file's format (or in none: its own error says what it lacks); a row of
    the other format alone is refused as a mixed file, naming both formats and the rows, not as a row missing its
    prompt or chat."""
    formats = _row_formats(row, cfg)
    if formats and mode not in formats:
        raise UserError(f"data file '{source}' mixes prompt/completion rows (columns '{cfg.prompt_column}', "
                        f"'{cfg.completion_column}') and chat rows (column '{cfg.messages_column}'): the format is "
                        f"taken from row 1, {FORMAT_NAMES[mode]}, and row {n} is {FORMAT_NAMES[formats[0]]}",
                        "write one format per file: every row a prompt/completion pair, or every row a chat in "
                        f"'{cfg.messages_column}' (a chat's last assistant turn is its completion)")
    return row


def parse_sft_rows(rows: list[dict[str, Any]], cfg: DataConfig, source: str, name: str) -> SFTSplit:
    """Pick prompt/completion columns (or the chat column) and build one example per row."""
    cols = [str(c) for c in rows[0]]
    mode = next(iter(_row_formats(rows[0], cfg)), None)
    if mode == "pair":
        missing = [c for c in (cfg.prompt_column, cfg.completion_column) if c not in rows[0]]
        if missing:
            key = "data.prompt_column" if missing[0] == cfg.prompt_column else "data.completion_column"
            guess = _guess([c for c in cols if c not in (cfg.prompt_column, cfg.completion_column)],
                           PROMPT_NAMES if key == "data.prompt_column" else COMPLETION_NAMES)
            chat = _guess(cols, MESSAGES_NAMES)
            raise UserError(f"data file '{source}' has no column '{missing[0]}' (columns: {', '.join(cols)})",
                            f"set {key} to the column that holds it" + (f", e.g. {key}={guess}" if guess else "")
                            + (f", or read the chats in '{chat}': data.messages_column={chat}" if chat else ""))
    elif mode is None:
        p, c, m = _guess(cols, PROMPT_NAMES), _guess(cols, COMPLETION_NAMES), _guess(cols, MESSAGES_NAMES)
        hint = (f"e.g. data.prompt_column={p} data.completion_column={c}" if p and c else
                f"e.g. data.messages_column={m}" if m else
                "set data.prompt_column and data.completion_column, or data.messages_column")
        raise UserError(f"data file '{source}' has neither prompt/completion columns ('{cfg.prompt_column}', "
                        f"'{cfg.completion_column}') nor a chat column ('{cfg.messages_column}') "
                        f"(columns: {', '.join(cols)})", f"name the columns that hold them: {hint}")
    examples = tuple(_example(_same_format(row, cfg, mode, source, n), cfg, mode, f"data file '{source}' row {n}")
                     for n, row in enumerate(rows, start=1))
    return SFTSplit(name, examples, source)


# ---------------------------------------------------------------------------------------------
# the dataset


def embedded_sft_dir() -> Path:
    """The demo instruction data that ships (demo_data/instructions), when it is there."""
    return Path(__file__).parent / "demo_data" / "instructions"


def example_key(example: Example) -> tuple[str, str]:
    """The key under which two rows are one when validation is carved: the prompt's and the completion's text_key
    (case, spaces and punctuation aside), so a row's copies are carved or kept together, as a text's are."""
    return text_key(example.prompt_text), text_key(example.completion)


def _random_split(train: SFTSplit, fraction: float, seed: int, keys: list) -> tuple[list[int], list[int]]:
    """(keep, carved): the classifier's carving (data.carve) with one class: a seeded random `fraction` of the rows,
    whole rows, at least one, a row's copies (`keys`: example_key per row) together and only where they fit that
    share."""
    return carve([""] * len(train), fraction, seed, keys)


def _random_subset(n: int, k: int, seed: int) -> list[int]:
    return sorted(random.Random(seed + 1).sample(range(n), k))


def from_labelled(dataset: Dataset) -> SFTDataset:
    """Generative classification (data.label_format=generate): each labelled text becomes a prompt (the
    text as the user turn) and a completion (its label's name). Splits, carving and subsets are the
    classifier's (data.load_dataset: stratified); multi-label data is refused."""
    if dataset.label_space.multi_label:
        raise UserError("data.label_format=generate reads single-label data; this data is multi-label",
                        "use task=classification for multi-label data, or give one label per row")
    empty = empty_text_problems(dataset)  # a text that is empty is a prompt with nothing to answer
    if empty:
        raise UserError("the labelled data has empty texts:\n" + "\n".join(f"  - {p}" for p in empty),
                        "drop those rows or fill them in")
    problems = generated_label_problems(dataset.label_space.labels)
    if problems:
        raise UserError("data.label_format=generate writes each label as text and reads it back (lower-cased, "
                        f"first line, trailing {LABEL_TRAILING_PUNCTUATION} stripped), so these labels cannot be told "
                        "apart:\n"
                        + "\n".join(f"  - {p}" for p in problems),
                        "rename the labels in the data (one line each, distinct after lower-casing), or use "
                        "task=classification")

    def convert(split: Split | None) -> SFTSplit | None:
        if split is None:
            return None
        return SFTSplit(split.name, tuple(Example((Turn("user", t),), labs[0]) for t, labs in
                                          zip(split.texts, split.labels)), split.source)

    return SFTDataset(convert(dataset.train), convert(dataset.validation), convert(dataset.test), dataset.notes,
                      dataset.label_space, uncarved=dataset.uncarved, unseen=dataset.unseen)


def load_sft_dataset(cfg: DataConfig, seed: int = 42) -> SFTDataset:
    """Read the splits the config names (a folder of train/validation/test files, or the *_file keys),
    carve a seeded random validation split when none is given, apply max_*_samples. Labelled data with
    label_format=generate goes through the classifier's reader (`from_labelled`)."""
    if cfg.label_format == "generate":
        return replace(from_labelled(load_dataset(cfg, seed=seed)), prompt_set=cfg.prompt_set)
    notes: list[str] = []
    splits: dict[str, SFTSplit] = {}
    name = cfg.dataset_name
    folder = None
    if name == EMBEDDED_SFT_DATA:  # the instruction demo that ships (the task's default)
        folder = embedded_sft_dir() if not cfg.train_file else None
    elif name == EMBEDDED_DATA and not cfg.train_file:  # labelled intents: no prompt/completion pairs
        raise UserError(f"dataset_name '{name}' is labelled intent data, not instruction or chat data",
                        "generate its labels as text with data.label_format=generate, or train on the instruction "
                        f"demo: data.dataset_name={EMBEDDED_SFT_DATA}")
    elif name and Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
    elif name and not cfg.train_file:
        raise UserError(f"dataset_name '{name}' is not a folder here (task causal-lm reads local files only)",
                        "point data.dataset_name at a folder with train/validation files, or set data.train_file")
    if folder is not None:
        for split in SPLIT_NAMES:
            if getattr(cfg, f"{split}_file"):  # named by its own key: the folder's file for it is not read
                continue
            p = find_split_file(folder, split)
            if p is not None:
                splits[split] = parse_sft_rows(read_rows(p, SFT_ROWS), cfg, str(p), split)
    for split, key in (("train", cfg.train_file), ("validation", cfg.validation_file), ("test", cfg.test_file)):
        if key:
            p = Path(key).expanduser()
            splits[split] = parse_sft_rows(read_rows(p, SFT_ROWS), cfg, str(p), split)
    notes += [n for split in splits.values() for n in prompt_weight_note(split)]
    if "train" not in splits:
        raise UserError("no training data found for task causal-lm",
                        "set data.train_file (rows with prompt/completion, or a messages chat), or "
                        "data.dataset_name to a folder with train/validation files")
    train = splits["train"]
    validation = splits.get("validation")
    uncarved: dict[str, str | None] = {}
    if validation is None:
        keys = [example_key(e) for e in train.examples]
        keep, carved = _random_split(train, cfg.validation_fraction, seed, keys)
        validation = train.subset(carved, name="validation", source=f"{train.source}{CARVED}")
        notes.append(carved_note("random", len(validation), len(train), cfg.validation_fraction, seed,
                                 "whole rows, at least one" + (", a row's copies carved together"
                                                               if len(set(keys)) < len(keys) else "")))
        uncarved = uncarved_classes(keys, [""] * len(keys), carved)
        train = train.subset(keep)
    if cfg.max_train_samples and cfg.max_train_samples < len(train):
        train = train.subset(_random_subset(len(train), cfg.max_train_samples, seed))
        notes.append(f"train: random subset of {len(train)} rows (max_train_samples)")
    if cfg.max_eval_samples and cfg.max_eval_samples < len(validation):
        validation = validation.subset(_random_subset(len(validation), cfg.max_eval_samples, seed))
        notes.append(f"validation: random subset of {len(validation)} rows (max_eval_samples)")
    prompt_set = cfg.prompt_set
    demo_prompts = embedded_sft_dir() / "prompt_set.jsonl"
    if prompt_set is None and folder == embedded_sft_dir() and demo_prompts.is_file():
        prompt_set = str(demo_prompts)
        notes.append(f"the demo instruction data: its prompt set ({demo_prompts.name}) is generated at every full "
                     "evaluation point")
    return SFTDataset(train, validation, splits.get("test"), tuple(notes), prompt_set=prompt_set, prepared_seed=seed,
                      uncarved=uncarved)


MIN_TRAIN_ROWS = 1
MIN_VALIDATION_ROWS = 1


def check_trainable(dataset: SFTDataset) -> None:
    """One UserError naming every split too small to train on or to score."""
    problems = []
    if len(dataset.train) < MIN_TRAIN_ROWS:
        problems.append(f"train: {len(dataset.train)} row(s); training needs at least {MIN_TRAIN_ROWS}")
    if len(dataset.validation) < MIN_VALIDATION_ROWS:  # carved: a validation file of no rows is refused when read
        # the carving's causes, from the whole train file (before max_train_samples), claimed where every class has
        # one: causal-lm's carving has one class (''), label_format=generate's is the classifier's (data.carve)
        causes = dataset.uncarved
        classes = set(dataset.label_space.labels) if dataset.generates_labels else {""}
        named = bool(causes) and classes <= causes.keys() and all(causes.values())
        problems.append("validation: 0 rows: no validation file was given and none could be carved from train ("
                        + (f"stratified: {CARVE_RULE}){': ' + said_causes(causes) if named else ''}"
                           if dataset.generates_labels else
                           "a row goes to validation with its copies, the same prompt and completion case and "
                           "punctuation aside, within validation_fraction of the rows, and one stays in train)"
                           + (f": train has {causes['']}" if named else "")))
    if problems:
        raise UserError(f"the data cannot be trained on ({len(problems)} problem(s)):\n"
                        + "\n".join(f"  - {p}" for p in problems), "give more rows, or data.validation_file")


# ---------------------------------------------------------------------------------------------
# rendering and tokenising


@dataclass(frozen=True)
class Renderer:
    """Writes prompts and completions out as text for one tokenizer (data.chat_template resolved)."""

    tokenizer: Any
    mode: str  # chat | plain | none

    @classmethod
    def for_tokenizer(cls, tokenizer, choice: str) -> "Renderer":
        if choice == "auto":
            choice = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
        return cls(tokenizer, {"plain": "plain", "none": "none"}.get(choice, "chat"))

    def prompt(self, turns: tuple[Turn, ...]) -> str:
        if self.mode == "chat":
            return self._chat(turns, [_msg(t) for t in turns], add_generation_prompt=True)
        if self.mode == "plain":
            return "".join(PLAIN_TEMPLATE["turn"].format(role=PLAIN_TEMPLATE["roles"][t.role], content=t.content)
                           for t in turns) + PLAIN_TEMPLATE["generation"]
        if len(turns) > 1:
            raise UserError("data.chat_template=none cannot write a chat of several turns",
                            "use chat_template=auto or plain for prompts of several turns, or write the prompt as "
                            "one text")
        return turns[0].content

    def completion(self, turns: tuple[Turn, ...], completion: str, prompt: str | None = None) -> str:
        """The completion as the template writes it after the prompt (chat: up to its end-of-turn mark). `prompt`:
        self.prompt(turns), when the caller has it (learn_earlier_texts: one render fewer per earlier turn)."""
        if self.mode != "chat":
            return completion
        prompt = self.prompt(turns) if prompt is None else prompt
        full = self._chat(turns, [_msg(t) for t in turns] + [{"role": "assistant", "content": completion}])
        return full[len(prompt):] if full.startswith(prompt) else completion

    def _chat(self, turns: tuple[Turn, ...], messages: list[dict[str, str]], **kwargs) -> str:
        """The tokenizer's chat template applied; a template that refuses the chat (Mistral's raises 'System role
        not supported', others 'Conversation roles must alternate') is a UserError, not a traceback."""
        from jinja2 import TemplateError

        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        except TemplateError as exc:
            roles = ", ".join(t.role for t in turns)
            raise UserError(f"the tokenizer's chat template refuses a chat with the turns ({roles}): {exc}",
                            CHAT_TEMPLATE_FIX) from None


def _msg(t: Turn) -> dict[str, str]:
    return {"role": t.role, "content": t.content}


def special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before a text on its own (BOS for Llama-2 style tokenizers; none for
    SmolLM2 and Qwen2), found by tokenising a probe with and without special tokens."""
    probe = "hello world"
    with_special = tokenizer(probe, add_special_tokens=True)["input_ids"]
    without = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for i in range(len(with_special) - len(without) + 1):
        if with_special[i:i + len(without)] == without:
            return list(with_special[:i])
    return []


@dataclass
class SFTEncoded:
    """A split tokenised once: ids without padding and, per row, how many leading tokens are prompt."""

    ids: list[list[int]]
    prompt_lens: np.ndarray  # int64 [n]: tokens 0..prompt_len-1 carry no loss
    truncated: int = 0  # rows cut to max_length
    end_stripped: int = 0  # rows with an assistant turn that ended with the end text the template writes (strip_turns)
    # per row, the spans [start, end) before prompt_len that are learnt too: a chat's earlier assistant turns
    earlier: list[tuple[tuple[int, int], ...]] = field(default_factory=list)
    # why -> a chat's assistant turns before its last that are not learnt (UNLEARNT_WHY)
    earlier_unlearnt: dict[str, int] = field(default_factory=dict)

    def _spans(self, row: int) -> tuple[tuple[int, int], ...]:
        return self.earlier[row] if self.earlier else ()

    @property
    def completion_tokens(self) -> np.ndarray:
        """int64 [n]: the tokens each row learns (its completion, and a chat's earlier assistant turns)."""
        return self.lengths - self.prompt_lens + np.fromiter(
            (sum(b - a for a, b in self._spans(i)) for i in range(len(self.ids))), dtype=np.int64, count=len(self.ids))

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))

    def labels(self, row: int) -> list[int]:
        ids, n = self.ids[row], int(self.prompt_lens[row])
        labels = [IGNORE] * n + ids[n:]
        for a, b in self._spans(row):
            labels[a:b] = ids[a:b]
        return labels

    def scored(self, rows) -> int:
        """Completion tokens the rows' loss scores: position t predicts token t+1, so a row's first token is
        never scored (sft.scored_logits counts the same ones)."""
        return sum(max(0, len(self.ids[i]) - max(1, int(self.prompt_lens[i])))
                   + sum(b - max(1, a) for a, b in self._spans(i) if b > max(1, a)) for i in rows)

    def __len__(self) -> int:
        return len(self.ids)


def fit(prefix: list[int], prompt: list[int], completion: list[int], max_length: int) -> tuple[list[int], int, bool]:
    """prefix + prompt + completion within max_length, keeping the completion: the prompt loses its
    beginning first (down to half the room), then the completion its end. Returns (ids, prompt tokens
    incl. the prefix, truncated?)."""
    room = max_length - len(prefix)
    keep_c = min(len(completion), max(room - len(prompt), room // 2))
    keep_p = min(len(prompt), room - keep_c)
    ids = prefix + prompt[len(prompt) - keep_p:] + completion[:keep_c]
    return ids, len(prefix) + keep_p, keep_p < len(prompt) or keep_c < len(completion)


def render_each(render, examples, name=None) -> list[str]:
    """render(example) for every example; a UserError names the example: `name(n)` (n from 1; a prompt-set row),
    else its place among the examples, and its prompt's start."""
    out = []
    for n, e in enumerate(examples, start=1):
        try:
            out.append(render(e))
        except UserError as exc:
            snippet = " ".join(e.prompt_text.split())
            snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
            where = name(n) if name else f"example {n} of {len(examples)}"
            raise UserError(f"{where} (prompt '{snippet}'): {exc.problem}", exc.fix) from None
    return out


# the contents the chat template is rendered with to find what it writes around an answer (turn_end, answer_prefix)
PROBE_ANSWERS = ("ok", "yes")


def probe_completion(renderer: Renderer, content: str = PROBE_ANSWERS[0]) -> str:
    """The completion the template renders for one short user turn answered with `content`."""
    return renderer.completion((Turn("user", "hello"),), content)


def turn_end(renderer: Renderer) -> str:
    """What the chat template writes after an assistant turn's content, as written ('<|end|>', '<|im_end|>\\n');
    '' for the plain and none templates, and for a chat template that ends a turn with nothing."""
    if renderer.mode != "chat":
        return ""
    probe = PROBE_ANSWERS[0]
    text = probe_completion(renderer, probe)
    return text[text.rfind(probe) + len(probe):] if probe in text else ""


def answer_lead(renderer: Renderer) -> str:
    """The text a chat template writes between its generation prompt and an assistant turn's content, the same for
    every answer: the text two completions with different contents (PROBE_ANSWERS) share before the content; '' for
    the plain and none templates."""
    if renderer.mode != "chat":
        return ""
    texts = [probe_completion(renderer, probe) for probe in PROBE_ANSWERS]
    n = 0
    while n < min(map(len, texts)) and texts[0][n] == texts[1][n]:
        n += 1
    return texts[0][:n]


def answer_prefix(tokenizer, renderer: Renderer) -> list[int]:
    """The token ids a chat template writes between its generation prompt and an assistant turn's content, the same
    for every answer (Qwen3's empty '<think>\\n\\n</think>\\n\\n'; none for most templates, and for the plain and none
    ones). encode_sft trains them as the start of every completion, as TRL does, so a trained model writes them before
    its answer from the generation prompt: a generation's budget is for the answer after them, and the answer is read
    after them (sft.generate). Found by rendering: the text before the content (answer_lead), and the leading tokens
    two completions with different contents, tokenised as encode_sft tokenises them, share within that text (a token
    that runs into the content, a space merged with the answer's first word, is the answer's)."""
    if renderer.mode != "chat":
        return []
    texts = [probe_completion(renderer, probe) for probe in PROBE_ANSWERS]
    n = len(answer_lead(renderer))
    if not n:
        return []
    fast = getattr(tokenizer, "is_fast", False)
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, return_offsets_mapping=fast)
    a, b = enc["input_ids"]
    # where each token of `a` ends in its text; a slow tokenizer has no offsets: the tokens of the shared text alone
    within = ([end <= n for _, end in enc["offset_mapping"][0]] if fast
              else [i < len(alone) and t == alone[i] for alone in _ids(tokenizer, [texts[0][:n]])
                    for i, t in enumerate(a)])
    k = 0
    while k < min(len(a), len(b)) and a[k] == b[k] and within[k]:
        k += 1
    return a[:k]


def end_marker(renderer: Renderer) -> str:
    """The chat template's end-of-turn mark ('<|end|>', '<|im_end|>'): turn_end without its whitespace."""
    return turn_end(renderer).strip()


def ends_with_eos(completion: list[int], eos: int, tail: list[int], stops: list[int] | tuple[int, ...] = ()) -> bool:
    """Whether a completion's token ids already end with the EOS id, as TRL's SFTTrainer asks of its text
    (`completion.endswith(eos_token)`), or with the ids of the chat template's end of turn (`tail`: turn_end's text
    tokenised) when the EOS id or a token generation stops at (`stops`: stop_token_ids, the template's one-token
    end-of-turn mark) is among them (SmolLM2's '<|im_end|>\\n'; a Llama-3-style '<|end|>' whose EOS is '</s>': TRL
    appends no EOS to a conversational completion, and a generation stops at the mark). Decided on ids, not text: an
    EOS inside the completion is text like any other, and a tokenizer that splits the EOS text into several tokens
    (split_special_tokens) writes no EOS id with it, so such a completion still gets its EOS."""
    return completion[-1:] == [eos] or (bool({eos, *stops} & set(tail)) and completion[-len(tail):] == tail)


def stop_token_ids(tokenizer, renderer: Renderer) -> list[int]:
    """The token ids a generation stops at: the tokenizer's EOS, and the chat template's end-of-turn mark when it is
    one token (the run learned to write it after each completion, so a generation that stops only at an EOS the
    template never writes runs on past its answer)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    mark = end_marker(renderer)
    if mark:
        mark_ids = tokenizer.encode(mark, add_special_tokens=False)
        if len(mark_ids) == 1 and mark_ids[0] not in ids:
            ids.append(mark_ids[0])
    return ids


def check_end_token(tokenizer, renderer: Renderer, name: str) -> None:
    """A run must teach its completions to end, as TRL's SFTTrainer does by appending eos_token: with no EOS token
    and no one-token end-of-turn mark from the chat template to stop at, the model learns completions that never
    stop, so every generation runs to max_new_tokens and no generated label parses (macro-F1 0 at every point).
    Refused before anything is trained or recorded."""
    if stop_token_ids(tokenizer, renderer):
        return
    mark = end_marker(renderer)
    raise UserError(f"the tokenizer of '{name}' has no eos_token and the '{renderer.mode}' template writes "
                    + (f"an end-of-turn mark '{mark}' that is not one token, so a generation has nothing to stop at"
                       if mark else "no end-of-turn mark, so the run would learn completions that never end")
                    + " (generations would run to max_new_tokens and generated labels would never parse)",
                    "set eos_token in the tokenizer's tokenizer_config.json (a token the model's vocabulary has, "
                    "e.g. '</s>'), or use a tokenizer with a chat template that ends each turn with a mark")


def end_texts(tokenizer, renderer: Renderer) -> tuple[str, ...]:
    """The texts a chat template writes after every answer itself: its end-of-turn mark and the EOS token's text when
    the template writes it ('<|im_end|>'); none for the plain and none templates, which append EOS to a completion
    only when it does not end with it (ends_with_eos)."""
    if renderer.mode != "chat":
        return ()
    written = turn_end(renderer)
    eos = getattr(tokenizer, "eos_token", None)
    return tuple(dict.fromkeys(t for t in (end_marker(renderer), eos if eos and eos in written else None) if t))


def strip_end(completion: str, ends: tuple[str, ...]) -> str:
    """A chat completion without the end text (end_texts) it was written with: the template writes that after the
    answer again, so a completion 'Goodbye.<|im_end|>' was learnt as 'Goodbye.<|im_end|><|im_end|>\\n' (a model
    taught to end a turn twice). TRL learns one; the count is in the run's data notes (encoding_notes)."""
    while True:
        end = next((e for e in ends if completion.rstrip().endswith(e)), None)
        if end is None:
            return completion
        completion = completion.rstrip()[: -len(end)]


# run.json / a tune study's meta: what a causal-lm run's loss covers in a chat. Runs recorded before the key learnt
# (and scored) each chat's last assistant turn only; evaluate scores such a run so (encode_sft's learn_earlier)
LOSS_COVERS_KEY = "loss_covers"
EVERY_TURN, LAST_TURN = "every assistant turn", "each chat's last assistant turn"


def learns_earlier(recorded: dict) -> bool:
    """Whether the run (or study) whose record is `recorded` learnt every assistant turn of a chat (LOSS_COVERS_KEY;
    absent: recorded before, the last turn only)."""
    return recorded.get(LOSS_COVERS_KEY, LAST_TURN) == EVERY_TURN


def loss_covers_note(recorded: dict, examples) -> str | None:
    """The note that a study's earlier trials' losses covered other tokens than this session's: recorded before every
    assistant turn was learnt, on chats with assistant turns before their last (None: the same tokens)."""
    if learns_earlier(recorded) or not any(e.learn_earlier and any(t.role == "assistant" for t in e.prompt)
                                           for e in examples):
        return None
    return (f"note: the study's earlier trials learnt and scored {LAST_TURN} (recorded by a loratune from before "
            f"{LOSS_COVERS_KEY}); this session's trials learn and score {EVERY_TURN}: their losses are not "
            "comparable")


# why a chat's assistant turn before its last is not learnt (SFTEncoded.earlier_unlearnt's keys), as its data note says
UNLEARNT_WHY = {
    "opening": "open their chats, with no prompt before them: not learnt (nothing asks for them)",
    "template": "are not learnt, only their chats' last answers: the chat template does not write an earlier turn as "
                "it writes it when it is the last (or refuses the chat cut before it)",
    "tokens": "are not learnt, only their chats' last answers: the tokenizer writes a chat's text across the edge of "
              "a turn as one token, so the turn's own tokens are not in the chat's",
}


def encoding_notes(split: str, enc: "SFTEncoded", renderer: Renderer) -> list[str]:
    """What encoding a split changed in its rows, for the run's data notes (run.json `data_notes`, --dry-run)."""
    notes = []
    if enc.end_stripped:
        ends = " / ".join(f"'{e}'" for e in end_texts(renderer.tokenizer, renderer))
        notes.append(f"{split}: {enc.end_stripped} row(s) had an assistant answer ending with {ends}, which the chat "
                     "template writes after every answer: dropped from the answer, so the end is written and learnt "
                     "once")
    for why, n in enc.earlier_unlearnt.items():
        if n:
            notes.append(f"{split}: {n} assistant turn(s) before the last {UNLEARNT_WHY[why]}")
    return notes


def strip_turns(example: Example, ends: tuple[str, ...]) -> Example:
    """The example with every assistant turn's content (its completion and the prompt's) without the end text the
    template writes after it again (strip_end): an earlier answer 'blocked<|im_end|>' was otherwise written
    'blocked<|im_end|><|im_end|>' into the prompt and the next turns."""
    if not ends:
        return example
    prompt = tuple(Turn(t.role, strip_end(t.content, ends)) if t.role == "assistant" else t for t in example.prompt)
    return replace(example, prompt=prompt, completion=strip_end(example.completion, ends))


def earlier_answers(turns: tuple[Turn, ...]) -> list[int]:
    """The places of a prompt's assistant turns that learn_earlier_texts learns: every one but an opening one (nothing
    asks for it: UNLEARNT_WHY's "opening")."""
    return [i for i, t in enumerate(turns) if t.role == "assistant" and i > 0]


def learn_earlier_texts(renderer: Renderer, example: Example, prompt: str | None = None,
                        layout: "TurnLayout | None | bool" = True) -> list[str] | None:
    """A chat's prompt written as texts that alternate: not learnt, an earlier assistant turn as the template writes it
    after its prompt (content and end of turn, as the completion is), not learnt, ..., ending with the text up to the
    last answer; together renderer.prompt(example.prompt). None when the example learns its last answer only (no
    earlier assistant turn, a prompt/completion row's prompt) or the template does not write each earlier turn as it
    writes it last (Qwen3's think block): then only the last answer is learnt.
    Found in the prompt's text rendered once (`prompt`: renderer.prompt(example.prompt), when the caller has it) where
    the template writes a chat turn by turn (`layout`: turn_layout(renderer), found here when True); else, and for a
    row whose text the marks cannot place, by rendering every prefix (_texts_by_prefix: renders grow with the square of
    the turns). The two give the same texts where the template writes every turn before an answer the same whether or
    not turns follow it. Where a turn that is no earlier answer is written otherwise inside the whole chat than in the
    answer's prefix (TRL's gemma4_v5 drops an empty opening answer from the whole chat only; lfm2_2_5 and glm4moe drop
    an opening answer's think text before a later user turn; muse_glimmer writes its default system message only in a
    chat with no system turn), marks learn the answer as the whole chat writes it, which is as it is written last
    (lead, content, end after the generation prompt), as TRL's assistant_only_loss learns it on the whole chat;
    rendering every prefix finds no prefix of the whole chat and leaves it unlearnt (UNLEARNT_WHY's "template")."""
    turns = example.prompt
    answers = earlier_answers(turns)
    if not example.learn_earlier or not answers or renderer.mode == "none":
        return None
    layout = turn_layout(renderer) if layout is True else layout
    texts = _texts_by_marks(renderer, turns, answers, prompt, layout) if layout else None
    return texts if texts is not None else _texts_by_prefix(renderer, turns, answers)


def _texts_by_prefix(renderer: Renderer, turns: tuple[Turn, ...], answers: list[int]) -> list[str] | None:
    """learn_earlier_texts by definition: each earlier answer's prefix rendered with the generation prompt (the text
    before it), and the chat through it (the answer as the template writes it last); None when these are no
    prefixes of each other and of the whole prompt, or the template refuses a prefix it writes inside the whole chat
    (Qwen3.5's and later 'No user query found' for a chat (system, assistant, ...) cut before the answer): the chat
    still learns its last answer, as where its answers are found by marks (_texts_by_marks renders no prefix), instead
    of the run being refused for some rows of a shape and not others. A chat the template refuses whole is refused."""
    full = renderer.prompt(turns)
    out, done = [], ""
    for i in answers:
        try:
            head = renderer.prompt(turns[:i])
            if not head.startswith(done):
                return None
            answer = renderer.completion(turns[:i], turns[i].content, head)
        except UserError:
            return None
        out += [head[len(done):], answer]
        done = head + answer
    return out + [full[len(done):]] if full.startswith(done) else None


@dataclass(frozen=True)
class TurnLayout:
    """How a template that writes a chat turn by turn writes an assistant turn inside a chat: after the text of the
    turns before it comes `opening` (the generation prompt), then the answer: `lead` (what the template writes before
    every answer's content, after the generation prompt: a space, often nothing), the content as it is, and `end`
    (turn_end). So the text before an earlier answer is the prompt up to its lead."""

    opening: str
    lead: str
    end: str


# private-use characters around a turn's number: where the template writes an earlier answer's content (_texts_by_marks)
MARK = ("\ue000", "\ue001")
# the chats a template is tried on before its prompts are split by marks (turn_layout): answers after user turns, a
# system turn, two user turns in a row, a chat opening with an answer; a template that refuses one is tried on the rest
LAYOUT_PROBES = (("user", "assistant", "user", "assistant", "user"),
                 ("system", "user", "assistant", "user", "assistant", "user"),
                 ("user", "user", "assistant", "user", "user", "assistant", "user"),
                 ("assistant", "user", "assistant", "user"))


def turn_layout(renderer: Renderer) -> TurnLayout | None:
    """The template's TurnLayout when it writes chats turn by turn: on every probe chat (LAYOUT_PROBES) it accepts,
    _texts_by_marks gives what rendering every prefix gives (_texts_by_prefix); None otherwise (a template that writes
    an earlier turn otherwise than the last, as Qwen3's think block, or that writes no probe): then every row's
    prefixes are rendered."""
    if renderer.mode == "none":
        return None
    probe = (Turn("user", "hello"),)
    if renderer.mode == "plain":
        layout = TurnLayout(PLAIN_TEMPLATE["generation"], "", "")
    else:
        try:
            head, bare = renderer.prompt(probe), renderer._chat(probe, [_msg(t) for t in probe])
            layout = TurnLayout(head[len(bare):], answer_lead(renderer), turn_end(renderer))
        except UserError:
            return None
        # the probe's completion is the lead, the content and the end (turn_end finds the end after the content)
        if not head.startswith(bare) \
                or probe_completion(renderer) != layout.lead + PROBE_ANSWERS[0] + layout.end:
            return None
    tried = 0
    for roles in LAYOUT_PROBES:
        turns = tuple(Turn(role, f"{role} {n}") for n, role in enumerate(roles))
        answers = earlier_answers(turns)
        try:
            expected = _texts_by_prefix(renderer, turns, answers)
            found = _texts_by_marks(renderer, turns, answers, None, layout)
        except UserError:
            continue
        if expected is None or found != expected:
            return None
        tried += 1
    return layout if tried else None


def _texts_by_marks(renderer: Renderer, turns: tuple[Turn, ...], answers: list[int], prompt: str | None,
                    layout: TurnLayout) -> list[str] | None:
    """learn_earlier_texts from two renders of the whole prompt (linear in the turns): the prompt, and the prompt with
    each earlier answer's content replaced by a mark (MARK around its number) that says where the template writes it;
    each answer is layout.lead, its content and layout.end, after layout.opening. None (render every prefix) when the
    marked prompt, its marks replaced by the contents, is not the prompt (a template that changes a content, or writes
    it otherwise than as a mark), or an answer is not written so. The text before an answer is the whole chat's, as
    the template writes it with the turns after (learn_earlier_texts: where it differs from the answer's prefix)."""
    if any(m in t.content for t in turns for m in MARK):
        return None
    marks = {i: f"{MARK[0]}{n}{MARK[1]}" for n, i in enumerate(answers)}
    prompt = renderer.prompt(turns) if prompt is None else prompt
    marked = renderer.prompt(tuple(Turn(t.role, marks[i]) if i in marks else t for i, t in enumerate(turns)))
    if marked.count(MARK[0]) != len(answers):
        return None
    rebuilt, spans, at, length = [], [], 0, 0  # spans: each answer's content's [start, end) in the rebuilt text
    for i in answers:
        k = marked.find(marks[i], at)
        if k < 0:
            return None
        content = turns[i].content
        rebuilt += [marked[at:k], content]
        length += k - at
        spans.append((length, length + len(content)))
        length += len(content)
        at = k + len(marks[i])
    if "".join(rebuilt) + marked[at:] != prompt:
        return None
    out, done = [], 0
    for start, end in spans:
        head, close = start - len(layout.lead), end + len(layout.end)  # the answer: prompt[head:close]
        if head - len(layout.opening) < done or not prompt.startswith(layout.opening, head - len(layout.opening)) \
                or not prompt.startswith(layout.lead, head) or not prompt.startswith(layout.end, end):
            return None
        out += [prompt[done:head], prompt[head:close]]
        done = close
    return out + [prompt[done:]]


def encode_sft(tokenizer, renderer: Renderer, examples: tuple[Example, ...] | list[Example],
               max_length: int, learn_earlier: bool = True) -> SFTEncoded:
    """Token ids and prompt lengths of every example (EOS appended to a completion that does not end with it:
    ends_with_eos; a chat's assistant turn that ends with the template's end text has it dropped: strip_turns).
    `learn_earlier` False: a chat learns its last answer only, as runs recorded before every assistant turn was
    learnt did (LOSS_COVERS)."""
    ends = end_texts(tokenizer, renderer)
    stripped = [strip_turns(e, ends) for e in examples]
    prompts = render_each(lambda e: renderer.prompt(e.prompt), stripped)
    # each row's prompt is rendered once: render_each reads the rows in order, so next(...) is the row's own
    heads = iter(prompts)
    completions = render_each(lambda e: renderer.completion(e.prompt, e.completion, next(heads)), stripped)
    if learn_earlier:
        wholes, layout = iter(prompts), turn_layout(renderer)
        pieces = render_each(lambda e: learn_earlier_texts(renderer, e, next(wholes), layout), stripped)
    else:
        pieces = [None] * len(stripped)
    p_ids = _ids(tokenizer, prompts)
    c_ids = _ids(tokenizer, completions)
    flat = iter(_ids(tokenizer, [t for texts in pieces if texts is not None for t in texts]))  # one call for all
    eos, prefix = tokenizer.eos_token_id, special_prefix(tokenizer)
    tail = _ids(tokenizer, [turn_end(renderer)])[0]  # the end of turn's ids
    stops = stop_token_ids(tokenizer, renderer)
    ids, prompt_lens, truncated, earlier = [], [], 0, []
    unlearnt = {why: 0 for why in UNLEARNT_WHY}
    for e, text, p, c, texts in zip(stripped, prompts, p_ids, c_ids, pieces):
        spans: list[tuple[int, int]] = []
        answers = [i for i, t in enumerate(e.prompt) if t.role == "assistant"] if e.learn_earlier and learn_earlier \
            else []
        opening = sum(i == 0 for i in answers)
        if texts is not None:  # the prompt's pieces, every second one (an earlier answer) learnt
            at = 0
            for k, piece in enumerate(next(flat) for _ in texts):
                if k % 2:
                    spans.append((at, at + len(piece)))
                if p[at:at + len(piece)] != piece:  # tokenised whole, the text runs across a turn's edge
                    spans = None
                    break
                at += len(piece)
            if spans is None or at != len(p):
                spans = []
                unlearnt["tokens"] += len(answers) - opening
                for _ in range(len(texts) - k - 1):  # the row's pieces not yet read
                    next(flat)
        elif answers:
            unlearnt["template"] += len(answers) - opening
        unlearnt["opening"] += opening
        if eos is not None and not ends_with_eos(c, eos, tail, stops):
            c = c + [eos]
        pre = _prefix_for(tokenizer, text, prefix)
        row, n, cut = fit(pre, p, c, max_length)
        # the spans in the row: the prompt kept its last n - len(pre) tokens
        drop = len(p) - (n - len(pre))
        earlier.append(tuple((len(pre) + max(0, a - drop), len(pre) + b - drop) for a, b in spans if b > drop))
        ids.append(row)
        prompt_lens.append(n)
        truncated += cut
    end_stripped = sum(a != b for a, b in zip(stripped, examples))
    return SFTEncoded(ids, np.array(prompt_lens, dtype=np.int64), truncated, end_stripped, earlier, unlearnt)


def encode_prompts(tokenizer, renderer: Renderer, examples, max_length: int, name=None) -> list[list[int]]:
    """Generation inputs: the prefix and the rendered prompt (with the assistant header), keeping its end. `name`:
    what a prompt the template cannot render is called (render_each). Its assistant turns are written as encode_sft
    writes them (strip_turns)."""
    ends = end_texts(tokenizer, renderer)
    prompts = render_each(lambda e: renderer.prompt(strip_turns(e, ends).prompt), examples, name)
    out, own = [], special_prefix(tokenizer)
    for text, p in zip(prompts, _ids(tokenizer, prompts)):
        prefix = _prefix_for(tokenizer, text, own)
        out.append(prefix + p[max(0, len(p) - (max_length - len(prefix))):])
    return out


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def _prefix_for(tokenizer, text: str, prefix: list[int]) -> list[int]:
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):  # the chat template wrote it already
        return []
    return prefix


def prompt_prefix(tokenizer, renderer: Renderer) -> list[int]:
    """The ids the run puts before every rendered prompt (the tokenizer's own BOS unless the template writes it), as
    encode_sft and encode_prompts do: what the adapter card's recipe must put there too."""
    text = renderer.prompt((Turn("user", "..."),))
    return _prefix_for(tokenizer, text, special_prefix(tokenizer))
