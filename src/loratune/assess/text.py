"""Text checks: normalisation for duplicate and conflict keys, words, encoding damage, non-printables."""

from __future__ import annotations

import re
import unicodedata

from loratune.listing import non_printable

_MOJIBAKE = re.compile("[\u00c2\u00c3][\u0080-\u00bf]|\u00e2\u20ac|\u00e2\u0080|\u00c3\u00a2\u00e2")
_WORD = re.compile(r"\w+")
_ALLOWED_CONTROL = {"\t", "\n", "\r"}


# symbols that carry meaning, kept as tokens of their own: currency (Sc: "$100" and "€100" are other requests) and
# emoji ("I ❤️ it", "I 👎 it"); deleting them made false conflicts and false leakage. Other symbols are decoration
# (bullets ●, rules ====, ~, |, arrows) and fold with punctuation, so texts differing only by them stay exact copies
_KEPT_SYMBOLS = ("Sc",)
# emoji blocks: Miscellaneous Symbols and Dingbats (☀ ❤ ✈), and everything from Mahjong Tiles on (🙂 👎 🚀)
_EMOJI_RANGES = ((0x2600, 0x27BF), (0x1F000, 0x1FAFF))


def _key_char(ch: str) -> str:
    cat = unicodedata.category(ch)
    if cat in _KEPT_SYMBOLS or (cat == "So" and any(lo <= ord(ch) <= hi for lo, hi in _EMOJI_RANGES)):
        return f" {ch} "
    return " " if cat[0] in "PS" else ch


def normalise(text: str) -> str:
    """Case-, space- and punctuation-insensitive key: NFKC, casefold, punctuation -> space, meaningful symbols
    (_KEPT_SYMBOLS) kept as tokens."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = "".join(_key_char(ch) for ch in t)
    return " ".join(t.split())


# sentence punctuation (after NFKC: fullwidth ，？！ are , ? !) and quotes: what a prompt's copy differs by when it is
# the same request ('Please, how much money do I have, can you?' and 'please how much money do i have can you').
# spaced_key strips them at a word's edges only; every other mark is content and kept, inside or between words
# ('what is a + b' / 'a - b' / 'a * b', 'C++' / 'C#', '3.5' / '35', "don't").
SENTENCE_PUNCTUATION = ".,?!;:\u2026\u3002\u3001\u00bf\u00a1" + "\"'`\u00ab\u00bb\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f"


def spaced_key(text: str) -> str:
    """Case-, space- and sentence-punctuation-insensitive key, symbols kept (NFKC, casefold, SENTENCE_PUNCTUATION
    stripped from each word's edges, runs of spaces as one): where a symbol is the content ('what is 2 + 3' and
    'what is 2 * 3', 'explain C++' and 'explain C#' are other prompts), normalise made them one prompt (false leakage,
    duplicates and several completions); a copy differing by commas, a question mark or case is the same prompt."""
    words_ = (w.strip(SENTENCE_PUNCTUATION) for w in unicodedata.normalize("NFKC", text).casefold().split())
    return " ".join(w for w in words_ if w)


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def has_encoding_damage(text: str) -> bool:
    return "\ufffd" in text or _MOJIBAKE.search(text) is not None


def _non_printable(ch: str) -> bool:
    """A control, format, private-use, surrogate or unassigned character, beside tab/newlines and the emoji joiner."""
    return ch not in _ALLOWED_CONTROL and non_printable(ch)  # (listing's rule: a label's, tab and newlines too)


def has_non_printable(text: str) -> bool:
    return any(_non_printable(ch) for ch in text)


def printable(text: str) -> str:
    """The text with each non-printable character as its escape (ESC as \\x1b, U+202E as \\u202e), the others kept:
    a label or text printed raw reaches the terminal as a command (clear the screen, retitle the window, reorder)."""
    if text.isprintable():  # the common case, one C call (isprintable is stricter: a newline or NBSP fails it)
        return text
    return "".join(ch.encode("unicode_escape").decode("ascii") if _non_printable(ch) else ch for ch in text)


def shorten(text: str, n: int = 120) -> str:
    t = text if len(text) <= n else text[: n - 1] + "…"
    return t.encode("unicode_escape").decode("ascii") if has_non_printable(t) else t
