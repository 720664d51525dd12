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


def spaced_key(text: str) -> str:
    """Case- and space-insensitive key, punctuation and symbols kept (NFKC, casefold, runs of spaces as one): where a
    symbol is the content ('what is 2 + 3' and 'what is 2 * 3', 'explain C++' and 'explain C#' are other prompts),
    normalise made them one prompt (false leakage, duplicates and several completions)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


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
