"""How a text from the user's data is written where its form carries meaning: on one line of a listing (its line
breaks as escapes), a label in a one-line list or a table cell (one quoting rule: predict, show, evaluate, the model
card), in Markdown (a code span), and the terminal console every command prints through. Standard library only: the
CLI imports it at start."""

from __future__ import annotations

import json
import re
import shlex
import unicodedata

# what ends a line for line tools (`wc -l`, `cut`, `paste`) and Python's splitlines, or sends the cursor back over it:
# written as its escape in a text printed as one line of a listing (the other control characters: printable)
LINE_BREAKS = str.maketrans({"\n": "\\n", "\r": "\\r", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def shell_path(path) -> str:
    """A path as one word of a command printed to paste into a shell (`next: loratune diagnose RUN`, a fix's
    `--study-dir DIR`): quoted where the shell would split or expand it, and one starting with '-' written as ./-x,
    which the command would otherwise take for an option (`loratune diagnose -dash`: "unrecognized arguments"). A
    leading ~/ stays outside the quotes, where the shell expands it (loratune expands it too)."""
    text = str(path)
    if text.startswith("~/"):
        return "~/" + shlex.quote(text[2:])
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def one_line(text) -> str:
    """A text from the user's data on one line: its line breaks written as escapes (LINE_BREAKS)."""
    return str(text).translate(LINE_BREAKS)


FORMAT_KEPT = {"\u200d"}  # zero-width joiner inside emoji: a format character that prints as part of its text


def non_printable(ch: str) -> bool:
    """A control (tab, ESC, DEL, line breaks), format, private-use, surrogate or unassigned character, beside the
    emoji joiner: it prints as whitespace, as nothing or as a terminal command."""
    cat = unicodedata.category(ch)
    return cat == "Cc" or (cat in ("Cf", "Co", "Cs", "Cn") and ch not in FORMAT_KEPT)


LABEL_JOIN = ", "  # between the labels of a one-line list (predict's answers, evaluate's pairs, the model card)
NO_LABEL = "(none)"  # a multi-label answer of no label


def label_text(label) -> str:
    """A label as a one-line list or a table cell names it (plain text): as written, or quoted as a JSON string where
    it holds LABEL_JOIN's comma, a quote, a line break or another non-printable character (a tab, ESC), or reads as
    NO_LABEL, so that "always, bal,ance, pin" (three labels, one with a comma) reads 'always, "bal,ance", pin', a
    label "bal\\nance" stays one line ("bal\\nance") and every label reads back (a quoted one with json.loads).
    The one rule of predict, show, evaluate, assess and the model card."""
    label = str(label)
    quote = ("," in label or '"' in label or label == NO_LABEL or one_line(label) != label
             or (not label.isprintable() and any(map(non_printable, label))))  # a tab split show's row in two
    if not quote:
        return label
    # json escapes the C0 controls only: DEL, C1, U+202E and the like as \uXXXX too (U+2028: one_line)
    return one_line("".join(json.dumps(ch)[1:-1] if non_printable(ch) else ch
                            for ch in json.dumps(label, ensure_ascii=False)))


def code_span(text) -> str:
    """The text as a Markdown code span that renders it literally (CommonMark 6.1): fenced by one backtick more than
    its longest run of them, padded by a space where it begins or ends with a backtick or with spaces at both ends
    (the renderer strips one from each side then). A line break inside renders as a space: give it one_line text."""
    text = str(text)
    runs = re.findall("`+", text)
    fence = "`" * (max(map(len, runs), default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" or (text[:1] == text[-1:] == " " and text.strip(" ")) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# the glyphs loratune's views print, each with the ASCII it is written as on a stream that cannot encode it (Windows
# redirects stdout as cp1252, LC_ALL=C gives ASCII): a view prints its glyph; the CLI's stdout and stderr write it
# through `encodable` (cli._ReaderMayLeave), so no view carries a fallback of its own
ASCII_GLYPHS = {
    "\u2713": "+", "\u2717": "x",  # a clause that passed / failed (diagnose, show)
    # a sparkline's eight levels (show's trend row) as an ASCII ramp
    "\u2581": "_", "\u2582": ".", "\u2583": ",", "\u2584": "-", "\u2585": "~", "\u2586": "=", "\u2587": "*",
    "\u2588": "#",
    "\u2013": "-", "\u2014": "--", "\u2212": "-", "\u2026": "...", "\u00b7": "-", "\u00b1": "+/-",
    "\u2192": "->", "\u2190": "<-", "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'",
    "\u2264": "<=", "\u2265": ">=", "\u2248": "~", "\u00d7": "x", "\u25cf": "*", "\u26a0": "!",
    "\u2500": "-", "\u2502": "|",  # rich's rule and table lines where it draws them regardless
}


def encodable(text: str, encoding: str | None) -> str:
    """The text as a stream of that encoding can write it: each character it cannot encode as its ASCII_GLYPHS
    fallback, any other (a label "заказ" on cp1252, a lone surrogate) as its backslash escape; the text itself where
    it encodes (the common case: one encode). A UnicodeEncodeError ended `diagnose`, `show`, `rules`... with a
    traceback when stdout was not UTF-8."""
    if not encoding:
        return text
    try:
        text.encode(encoding)
        return text
    except LookupError:  # an encoding Python does not know: as written
        return text
    except UnicodeEncodeError:
        pass

    def fits(ch: str) -> bool:
        try:
            ch.encode(encoding)
            return True
        except UnicodeEncodeError:
            return False

    swap = {ch: ASCII_GLYPHS[ch] for ch in set(text) if ch in ASCII_GLYPHS and not fits(ch)}
    if swap:
        text = text.translate(str.maketrans(swap))
    return text.encode(encoding, "backslashreplace").decode(encoding)


def console(stderr: bool = False, soft_wrap: bool = False, highlight: bool = False):
    """The rich console loratune prints through, the one every command (and a run's progress lines) makes: emoji
    codes are left as written (rich's default turned a label ":warning: pin" into "⚠ pin" in predict's answers,
    `show` and `diagnose`: a printed label that is not the label); no highlighting of numbers and paths unless asked.
    soft_wrap: a line printed whole (commands._common.piped), not folded at the console's width."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=highlight, soft_wrap=soft_wrap, emoji=False)
