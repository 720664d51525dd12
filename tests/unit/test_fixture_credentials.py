"""No committed fixture republishes a credential (bench/redact_credentials.py redacts them when a fold is collected)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from redact_credentials import PATTERNS, redact  # noqa: E402


def test_no_fixture_holds_a_credential():
    found = []
    for p in sorted((ROOT / "tests" / "fixtures").rglob("*")):
        if p.suffix in (".ipynb", ".json", ".csv", ".jsonl") and p.is_file():
            text = p.read_text(encoding="utf-8", errors="replace")
            found += [f"{p.relative_to(ROOT)}: {rx.pattern}" for rx, _ in PATTERNS if rx.search(text)]
    assert not found, found


def test_redaction_keeps_the_code_and_drops_the_secret():
    cell = 'login(token="hf_' + "a" * 34 + '")\nwandb.login(key=\'' + "0f" * 20 + "')\nwb_token = \\\"" + "1" * 40 + '\\"'
    out = redact(cell)
    assert "hf_REDACTED" in out and "key='REDACTED'" in out and 'wb_token = \\"REDACTED\\"' in out
    assert "a" * 34 not in out and "0f" * 20 not in out and "1" * 40 not in out
    assert redact("sk-finetuned-shakespeare") == "sk-finetuned-shakespeare"  # a model name, not a key
