"""The prompt set of a generative (SFT) run: its file, and the scores of greedy generations (pure; no torch).

Protocol section 9: a small held-out file of prompts with reference answers, split into prompts close to
the training prompts (`familiar`) and new ones (`novel`), generated greedily at every full evaluation point and
scored. Rank too low reads as vague, short, over-general answers on both groups; too high as exact answers
on familiar prompts while the novel ones drift (the familiar-novel gap widens).

- `load_prompt_set(path)` reads the file: JSON Lines (or CSV / Parquet) rows with `prompt`, `reference`
  and `group` (one of `PROMPT_GROUPS`); a bad row raises one `UserError` naming the file, the row and the fix.
- `score_generations(outputs, references)` scores one list of generations (`SCORES` names every number).
- `score_prompt_set(items, outputs)` scores a whole prompt set per group and returns history keys.
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


def score_generations(outputs: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean scores of generations against their references (keys: `SCORES`, plus `n` rows scored).
    `len_ratio` is 0.0 when every reference is empty."""
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")
    n = len(outputs)
    if n == 0:
        raise ValueError("no generations to score")
    ref_words = sum(len(_words(r)) for r in references)
    chrfs = [chrf(o, r) for o, r in zip(outputs, references)]
    mean_chrf = sum(chrfs) / n
    std = math.sqrt(sum((x - mean_chrf) ** 2 for x in chrfs) / (n - 1)) if n >= 2 else 0.5
    return {
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
    """One held-out prompt, its reference answer and its group (`familiar` or `novel`)."""

    prompt: str
    reference: str
    group: str


FIELDS = ("prompt", "reference", "group")
_FIX = ('each row needs "prompt" and "reference" (non-empty text) and "group" ("familiar": close to the '
        'training prompts, "novel": new ones), e.g. {"prompt": "...", "reference": "...", "group": "novel"}')
_MAX_LISTED = 5  # problems named in one error; the count says how many more


def load_prompt_set(path: str | Path) -> list[PromptItem]:
    """The rows of a prompt-set file. Every bad row is found before one UserError names the file, the rows
    (numbered from 1: the line of a JSONL file without blank lines, the data row under a CSV header) and the fix."""
    from loratune.data import RowFile, read_rows  # the shared reader: suffix, encoding and JSON errors named once

    p = Path(path).expanduser()
    rows = read_rows(p, RowFile("prompt set", "data.prompt_set", "prompt / reference / group",
                                '{"prompt": "...", "reference": "...", "group": "novel"}'))
    items: list[PromptItem] = []
    problems: list[str] = []
    for i, row in enumerate(rows, start=1):
        bad = []
        for name in ("prompt", "reference"):
            v = row.get(name)
            if not isinstance(v, str) or not v.strip():
                bad.append(f'"{name}" is {"missing" if v is None else "empty or not text"}')
        group = row.get("group")
        if group not in PROMPT_GROUPS:
            bad.append(f'"group" is {group!r}, allowed: {", ".join(PROMPT_GROUPS)}')
        if bad:
            problems.append(f"row {i}: " + "; ".join(bad))
        else:
            items.append(PromptItem(row["prompt"], row["reference"], group))
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise UserError(f"prompt set '{p}': {len(problems)} bad row(s): " + "; ".join(problems[:_MAX_LISTED]) + more,
                        _FIX)
    return items


def score_prompt_set(items: Sequence[PromptItem], outputs: Sequence[str]) -> dict[str, float]:
    """Scores per group as history keys (`prompt_key`); a group with no items has no keys."""
    if len(items) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(items)} prompt-set items")
    out: dict[str, float] = {}
    for group in PROMPT_GROUPS:
        idx = [i for i, it in enumerate(items) if it.group == group]
        if not idx:
            continue
        scores = score_generations([outputs[i] for i in idx], [items[i].reference for i in idx])
        out.update({prompt_key(group, m): scores[m] for m in SCORES})
    return out
