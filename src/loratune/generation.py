"""The prompt set of a generative (SFT) run: its file, and the scores of greedy generations (pure; no torch).

Protocol section 9: a small held-out file of prompts with reference answers, split into prompts close to
the training prompts (`familiar`) and new ones (`novel`), generated greedily at every full evaluation point and
scored. Rank too low reads as vague, short, over-general answers on both groups; too high as exact answers
on familiar prompts while the novel ones drift (the familiar-novel gap widens).

- `load_prompt_set(path)` reads the file: JSON Lines (or CSV / Parquet) rows with `prompt` (a text, or a list of
  {role, content} turns ending with a user turn: TRL's conversational prompt), `reference` and `group` (one of
  `PROMPT_GROUPS`); a bad row raises one `UserError` naming the file, the row and the fix, and so does a prompt
  given twice (`SAME_PROMPT`: the same turns with the same texts, spaces aside).
- `score_generations(outputs, references)` scores one list of generations (`SCORES` names every number).
- `score_prompt_set(items, outputs, capped)` scores a whole prompt set per group and returns history keys.
- `prompt_key(group, metric)` is THE history key format (`val/prompt_<group>_<metric>`): the trainer writes
  these keys and the diagnosis features read them, both through this function.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from loratune.errors import UserError
from loratune.objectives import PROMPT_GROUPS, SCORES, prompt_key  # noqa: F401  (re-exported)

# the prompt-set score names and their history keys are defined with the objectives (objectives.py)
REPEAT_NGRAM = 3  # word n-gram length of `repetition`: 3-grams repeat in loops, seldom in normal prose


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------

_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    """Lower case, whitespace runs to one space, ends stripped (what exact match compares)."""
    return _WS.sub(" ", text).strip().lower()


def _words(text: str) -> list[str]:
    return normalise(text).split()


def repetition(text: str, n: int = REPEAT_NGRAM) -> float:
    """Share of repeated word n-grams: (n-grams - distinct n-grams) / n-grams; 0.0 under n words."""
    w = _words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


def chrf(output: str, reference: str) -> float:
    """Sentence chrF of one output against one reference, 0..1 (sacrebleu CHRF, default chrF2 settings).
    Both empty counts as a perfect match (sacrebleu gives 0 there)."""
    if not output.strip() and not reference.strip():
        return 1.0
    from sacrebleu.metrics import CHRF  # imported here: only scoring needs it, not the diagnosis

    return CHRF().sentence_score(output, [reference]).score / 100.0


def score_generations(outputs: Sequence[str], references: Sequence[str],
                      capped: Sequence[bool] | None = None) -> dict[str, float]:
    """Mean scores of generations against their references (keys: `SCORES`, plus `n` rows scored; `capped` only
    when given: per output, whether it ran to the token cap without an end-of-sequence token, sft.generate_capped).
    `len_ratio` is 0.0 when every reference is empty."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    if capped is not None and len(capped) != len(outputs):
        raise ValueError(f"{len(capped)} capped flags for {len(outputs)} outputs")
    n = len(outputs)
    if n == 0:
        raise ValueError("no generations to score")
    ref_words = sum(len(_words(r)) for r in references)
    chrfs = [chrf(o, r) for o, r in zip(outputs, references)]
    mean_chrf = sum(chrfs) / n
    std = math.sqrt(sum((x - mean_chrf) ** 2 for x in chrfs) / (n - 1)) if n >= 2 else 0.5
    return {
        **({"capped": sum(map(bool, capped)) / n} if capped is not None else {}),
        "exact_match": sum(normalise(o) == normalise(r) for o, r in zip(outputs, references)) / n,
        "chrf": mean_chrf,
        "chrf_se": std / math.sqrt(n),
        "len_ratio": sum(len(_words(o)) for o in outputs) / ref_words if ref_words else 0.0,
        "repetition": sum(repetition(o) for o in outputs) / n,
        "empty": sum(not o.strip() for o in outputs) / n,
        "n": float(n),
    }


# ---------------------------------------------------------------------------------------------
# The prompt-set file
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptItem:
    """One held-out prompt, its reference answer and its group (`familiar` or `novel`). `prompt`: a text (generated
    as one user turn) or the turns of a chat (TRL's conversational prompt, sft_data.Turn: a system turn as training
    rows carry it)."""

    prompt: str | tuple  # str, or tuple[sft_data.Turn, ...]
    reference: str
    group: str

    @property
    def text(self) -> str:
        """The prompt as a person reads it (a chat's turn contents, as sft_data.Example.prompt_text)."""
        return self.prompt if isinstance(self.prompt, str) else "\n".join(t.content for t in self.prompt)

    @property
    def key(self) -> tuple:
        """What makes two prompts the same prompt (SAME_PROMPT): each turn's role and its text with runs of spaces as
        one. Not data.text_key (near copies for assess and the carving): it drops symbols, so 'what is 2+2' and
        'what is 2*2', 'explain C++' and 'explain C#' were one prompt there, and a maths or code prompt set was
        refused; nor case-blind: 'What is my balance' and 'what is my balance' are other token ids, generated apart."""
        turns = [("user", self.prompt)] if isinstance(self.prompt, str) else [(t.role, t.content) for t in self.prompt]
        return tuple((role, " ".join(content.split())) for role, content in turns)


FIELDS = ("prompt", "reference", "group")
_FIX = ('each row needs "prompt" (non-empty text, or a list of {role, content} turns ending with a user turn), '
        '"reference" (non-empty text) and "group" ("familiar": close to the training prompts, "novel": new ones), '
        'e.g. {"prompt": "...", "reference": "...", "group": "novel"}')
# what "the same prompt" means (PromptItem.key), said once: the duplicate check's message and the docs say it
SAME_PROMPT = "the same turns with the same texts, spaces aside"
_DUP_FIX = "keep one row per prompt (a prompt is familiar or novel, not both)"
_MAX_LISTED = 5  # problems named in one error; the count says how many more


def _row_problems(row: dict, n: int) -> tuple[PromptItem | None, list[str], list[str]]:
    """Row `n` as a PromptItem (None when bad), its problems and their fixes."""
    from loratune.data import check_characters
    from loratune.sft_data import PROMPT_SHAPE, plain_cell, read_turns

    bad: list[str] = []
    fixes: list[str] = []
    prompt = plain_cell(row.get("prompt"))
    if isinstance(prompt, (list, tuple)):  # TRL's conversational prompt: [{"role": ..., "content": ...}, ...]
        try:
            prompt = read_turns(prompt, f"row {n}", "prompt", PROMPT_SHAPE)
        except UserError as exc:
            bad.append(exc.problem.removeprefix(f"row {n}: ").removeprefix(f"row {n} "))
            fixes.append(exc.fix)
            prompt = None
        else:
            if prompt[-1].role != "user":
                bad.append(f'"prompt" ends with its {prompt[-1].role} turn, not a user turn')
                fixes.append(_FIX)
            elif not any(t.content.strip() for t in prompt if t.role != "system"):
                bad.append('"prompt" has no text in its turns')
                fixes.append(_FIX)
    for name, v in (("prompt", prompt), ("reference", row.get("reference"))):
        texts = [t.content for t in v] if isinstance(v, tuple) else [v]
        if not isinstance(v, tuple) and (not isinstance(v, str) or not v.strip()):
            if not (name == "prompt" and v is None and row.get("prompt") is not None):  # (a bad turn list: said)
                bad.append(f'"{name}" is {"missing" if v is None else "empty or not text"}')
                fixes.append(_FIX)
            continue
        wheres = [f'"{name}"'] if not isinstance(v, tuple) else [f'turn {k} ({t.role}) of "{name}"'
                                                                  for k, t in enumerate(v, start=1)]
        for text, where in zip(texts, wheres):
            try:
                check_characters(text, where)  # the one check of a lone surrogate (data.py)
            except UserError as exc:
                bad.append(exc.problem)
                fixes.append(exc.fix)
                break
    group = row.get("group")
    if group not in PROMPT_GROUPS:
        bad.append(f'"group" is {group!r}, allowed: {", ".join(PROMPT_GROUPS)}')
        fixes.append(_FIX)
    return (None if bad else PromptItem(prompt, row["reference"], group)), bad, fixes


def load_prompt_set(path: str | Path) -> list[PromptItem]:
    """The rows of a prompt-set file. Every bad row is found before one UserError names the file, the rows
    (numbered from 1: the line of a JSONL file without blank lines, the data row under a CSV header) and the fix.
    A prompt given twice (in one group or in both) is refused, naming its rows: a copy is scored twice."""
    from loratune.data import RowFile, read_rows  # the shared reader: suffix, encoding and JSON errors named once

    p = Path(path).expanduser()
    rows = read_rows(p, RowFile("prompt set", "data.prompt_set", "prompt / reference / group",
                                '{"prompt": "...", "reference": "...", "group": "novel"}'))
    items: list[tuple[int, PromptItem]] = []
    problems: list[str] = []
    fixes: list[str] = []
    for i, row in enumerate(rows, start=1):
        item, bad, row_fixes = _row_problems(row, i)
        if bad:
            problems.append(f"row {i}: " + "; ".join(bad))
            fixes += [f for f in dict.fromkeys(row_fixes) if f not in fixes]
        else:
            items.append((i, item))
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise UserError(f"prompt set '{p}': {len(problems)} bad row(s): " + "; ".join(problems[:_MAX_LISTED]) + more,
                        "; ".join(fixes))
    copies: dict[tuple, list[tuple[int, PromptItem]]] = {}
    for i, it in items:
        copies.setdefault(it.key, []).append((i, it))
    dups = [c for c in copies.values() if len(c) > 1]
    if dups:
        said = [f"rows {', '.join(str(i) for i, _ in c)} ({', '.join(dict.fromkeys(it.group for _, it in c))}): "
                f"'{c[0][1].text[:40]}'" for c in dups]
        more = f" (and {len(said) - _MAX_LISTED} more)" if len(said) > _MAX_LISTED else ""
        raise UserError(f"prompt set '{p}': {len(dups)} prompt(s) given more than once ({SAME_PROMPT}; a copy is "
                        "scored twice and narrows chrf_se): " + "; ".join(said[:_MAX_LISTED]) + more, _DUP_FIX)
    return [it for _, it in items]


def score_prompt_set(items: Sequence[PromptItem], outputs: Sequence[str],
                     capped: Sequence[bool] | None = None) -> dict[str, float]:
    """Scores per group as history keys (`prompt_key`); a group with no items has no keys. `capped` (per output:
    it ran to train.max_new_tokens without an end-of-sequence token, sft.generate_capped) adds
    `val/prompt_<group>_capped`, the share the cap cut: what tells a short len_ratio the cap made from vague answers."""
    if len(items) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(items)} prompt-set items")
    out: dict[str, float] = {}
    for group in PROMPT_GROUPS:
        idx = [i for i, it in enumerate(items) if it.group == group]
        if not idx:
            continue
        scores = score_generations([outputs[i] for i in idx], [items[i].reference for i in idx],
                                   None if capped is None else [capped[i] for i in idx])
        out.update({prompt_key(group, m): scores[m] for m in SCORES if m in scores})
    return out
