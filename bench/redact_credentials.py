"""Redact credentials that public notebooks leak (a Hugging Face token, a W&B key written into a cell) from the
external diagnosis corpus before it is committed: `python bench/redact_credentials.py tests/fixtures/external/public_x`.

A fold's notebooks are copied byte-exact from public repositories; a token in one is third-party and already public
there, but it is not ours to republish. Each match is replaced by REDACTED (the JSON stays valid: the patterns never
span a quote), and the run's manifest entry says so (`redacted`). tests/unit/test_fixture_credentials.py fails on any
fixture that still holds one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PATTERNS = (
    (re.compile(r"hf_[A-Za-z0-9]{30,}"), "hf_REDACTED"),  # Hugging Face user access token
    (re.compile(r"(wandb\.login\(\s*key\s*=\s*\\?['\"])[0-9a-f]{40}"), r"\1REDACTED"),  # W&B API key
    (re.compile(r"((?:token|key|api_key)\s*=\s*\\?['\"])[0-9a-f]{40}(?=\\?['\"])"), r"\1REDACTED"),  # ... assigned
    (re.compile(r"sk-(?:proj-)?[A-Za-z0-9]{32,}"), "sk-REDACTED"),  # OpenAI API key
    (re.compile(r"ghp_[A-Za-z0-9]{36}"), "ghp_REDACTED"),  # GitHub personal access token
)


def redact(text: str) -> str:
    for rx, rep in PATTERNS:
        text = rx.sub(rep, text)
    return text


def main(folders: list[str]) -> int:
    for folder in folders:
        for p in sorted(Path(folder).rglob("*.ipynb")):
            s = p.read_text(encoding="utf-8")
            t = redact(s)
            if t != s:
                p.write_text(t, encoding="utf-8")
                print(f"redacted {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
