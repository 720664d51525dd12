"""Every text file loratune reads or writes is opened as UTF-8, never in the locale's encoding: `tune --resume` of a
finished study read final/study.json (written as UTF-8) with read_text() and crashed under a non-UTF-8 locale
(UnicodeDecodeError; _recorded_spent_s swallowed the same error). Checked over the source: a text-mode open(),
Path.open(), read_text() or write_text() names its encoding."""

from __future__ import annotations

import ast
from pathlib import Path

import loratune

SRC = Path(loratune.__file__).parent  # the tree under test


# callables that open a file as (file, mode): the mode is the 2nd argument; their default mode
FILE_OPENERS = {"open": "r", "io.open": "r", "builtins.open": "r", "gzip.open": "rb", "bz2.open": "rb",
                "lzma.open": "rb"}
# .open of these is no text file's (os.open: flags; tarfile's mode is the archive's) or names its own encoding
NOT_FILES = {"os", "webbrowser", "tarfile", "zipfile", "Study", "Trackers"}


def _mode(call: ast.Call, at: int, default: str) -> str | None:
    """The call's mode: the keyword or the argument at `at` where a constant; None where it is a variable."""
    for kw in call.keywords:
        if kw.arg == "mode":
            return str(kw.value.value) if isinstance(kw.value, ast.Constant) else None
    if len(call.args) > at:
        return str(call.args[at].value) if isinstance(call.args[at], ast.Constant) else None
    return default


def opens_without_encoding(source: str) -> list[int]:
    """The lines of `source` that open a text file without naming its encoding: read_text/write_text; open,
    io.open, gzip.open... (mode: the 2nd argument); any other .open (a Path's: mode the 1st); a variable mode is
    not judged."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(kw.arg == "encoding" for kw in node.keywords):
            continue
        f = node.func
        if isinstance(f, ast.Name):
            qual, name = f.id, f.id
        elif isinstance(f, ast.Attribute):
            owner = f.value.id if isinstance(f.value, ast.Name) else ""
            qual, name = f"{owner}.{f.attr}", f.attr  # ".open": a method of an expression
            if owner in NOT_FILES:
                continue
        else:
            continue
        if name in ("read_text", "write_text"):
            mode = "r"
        elif qual in FILE_OPENERS:
            mode = _mode(node, 1, FILE_OPENERS[qual])
        elif name == "open" and isinstance(f, ast.Attribute):  # path.open(mode)
            mode = _mode(node, 0, "r")
        else:
            continue
        if mode is not None and "b" not in mode:
            found.append(node.lineno)
    return found


def text_opens_without_encoding() -> list[str]:
    return [f"{path.relative_to(SRC)}:{line}" for path in sorted(SRC.rglob("*.py"))
            for line in opens_without_encoding(path.read_text(encoding="utf-8"))]


def test_the_scan_tells_text_opens_from_binary_ones():
    flagged = ['open(p)', 'open(p, "w")', 'io.open(p, "r")', 'gzip.open(p, "rt")', 'bz2.open(p, mode="wt")',
               'Path(p).open()', 'self.path.open("w")', '(d / "x").open()', 'p.read_text()', 'p.write_text(s)']
    fine = ['open(p, "rb")', 'open(p, "w", encoding="utf-8")', 'self.path.open("rb")', '(d / "x").open("rb")',
            'bz2.open(p, "rb")', 'gzip.open(p)', 'gzip.open(p, "rt", encoding="utf-8")', 'open(p, mode)',
            'path.open(mode)', 'os.open(p, os.O_RDONLY)', 'tarfile.open(p, "r")', 'p.read_text(encoding="utf-8")']
    assert [bool(opens_without_encoding(code)) for code in flagged] == [True] * len(flagged)
    assert [bool(opens_without_encoding(code)) for code in fine] == [False] * len(fine)


def test_every_text_file_is_opened_as_utf8():
    assert text_opens_without_encoding() == []
