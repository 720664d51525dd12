"""Every text file loratune reads or writes is opened as UTF-8, never in the locale's encoding: `tune --resume` of a
finished study read final/study.json (written as UTF-8) with read_text() and crashed under a non-UTF-8 locale
(UnicodeDecodeError; _recorded_spent_s swallowed the same error). Checked over the source: a text-mode open(),
Path.open(), read_text() or write_text() names its encoding."""

from __future__ import annotations

import ast
from pathlib import Path

import loratune

SRC = Path(loratune.__file__).parent  # the tree under test


def _mode(call: ast.Call, at: int) -> str:
    for kw in call.keywords:
        if kw.arg == "mode" and isinstance(kw.value, ast.Constant):
            return str(kw.value.value)
    if len(call.args) > at and isinstance(call.args[at], ast.Constant):
        return str(call.args[at].value)
    return "r"


def text_opens_without_encoding() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or any(kw.arg == "encoding" for kw in node.keywords):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name in ("read_text", "write_text"):
                pass
            elif name == "open" and owner in ("", "io", "builtins"):  # open(path, mode)
                if "b" in _mode(node, 1):
                    continue
            elif name == "open" and isinstance(f, ast.Attribute) and owner not in ("os", "gzip", "Study", "Trackers",
                                                                                 "webbrowser", "tarfile", "zipfile"):
                if "b" in _mode(node, 0):  # path.open(mode)
                    continue
            else:
                continue
            found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    return found


def test_every_text_file_is_opened_as_utf8():
    assert text_opens_without_encoding() == []
