"""The README's layout section matches the tree: every module and package of src/loratune is named
there, and every file it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "src" / "loratune"


def _layout() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Layout"):]
    return re.search(r"```\n(.*?)```", section, re.S).group(1)


def test_every_module_and_package_is_in_the_layout():
    layout = _layout()
    named = set(re.findall(r"\b([\w]+\.py)\b", layout)) | set(re.findall(r"\b(\w+)/", layout))
    top = {p.name for p in PKG.glob("*.py") if p.name != "__init__.py"}
    packages = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert top - named == set(), "modules missing from the README layout"
    assert packages - named == set(), "packages missing from the README layout"


def test_every_file_the_layout_names_exists():
    files = {p.name for p in PKG.rglob("*.py")}
    named = set(re.findall(r"\b([\w]+\.py)\b", _layout()))
    assert named - files == set(), "the README layout names files that do not exist"
