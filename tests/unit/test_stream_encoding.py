"""A command's output on a stream that is not UTF-8 (Windows redirects stdout as cp1252; LC_ALL=C and
PYTHONIOENCODING=ascii give ASCII): `diagnose`, `show`, `rules` ended with a UnicodeEncodeError traceback (rc 1) on
their glyphs (the clause marks, the sparklines, '–', '…'), and a JSON mode wrote half its JSON before it. Now each
glyph the stream cannot encode is written as its ASCII fallback (listing.ASCII_GLYPHS), other text escaped, and every
JSON is ASCII with \\u escapes: it parses to what a UTF-8 run prints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.listing import ASCII_GLYPHS, encodable

from support import run_on

FIX = Path(__file__).parents[1] / "fixtures/runs"


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
@pytest.mark.parametrize("argv, fallbacks", [
    (["diagnose", str(FIX / "overfit-b77-r64")], ["    + "]),  # ✓ of a clause that passed
    (["diagnose", str(FIX / "overfit-b77-r64"), str(FIX / "overfit-b77-r64-s2")], ["    + "]),
    (["show", str(FIX / "healthy-b77-s1")], ["trend", "#"]),  # the sparkline as the ASCII ramp
    (["rules"], []),
])
def test_a_view_prints_on_a_stream_that_is_not_utf8(monkeypatch, encoding, argv, fallbacks):
    code, out = run_on(monkeypatch, encoding, argv)
    assert code == 0
    for text in fallbacks:
        assert text in out
    if encoding == "ascii":
        assert out.isascii()
        assert "..." in out if argv == ["rules"] else True  # '…' as '...'
    _, utf8 = run_on(monkeypatch, "utf-8", argv)  # the same lines, glyph for glyph
    assert len(out.splitlines()) == len(utf8.splitlines())


def test_show_writes_a_sparkline_as_the_ascii_ramp(monkeypatch):
    _, out = run_on(monkeypatch, "ascii", ["show", str(FIX / "healthy-b77-s1")])
    _, utf8 = run_on(monkeypatch, "utf-8", ["show", str(FIX / "healthy-b77-s1")])
    trend = next(line for line in utf8.splitlines() if line.startswith("trend"))
    ramp = next(line for line in out.splitlines() if line.startswith("trend"))
    assert ramp == trend.translate(str.maketrans({k: v for k, v in ASCII_GLYPHS.items() if len(v) == 1}))
    assert set(ramp[5:].split()[0]) <= set("_.,-~=*#")


@pytest.mark.parametrize("encoding", ["cp1252", "ascii"])
@pytest.mark.parametrize("argv", [["diagnose", "--json", str(FIX / "overfit-b77-r64")], ["rules", "--json"],
                                  ["report", "--json", str(FIX / "healthy-b77-s1")]])
def test_json_is_ascii_and_reads_as_the_utf8_runs(monkeypatch, encoding, argv):
    code, out = run_on(monkeypatch, encoding, argv)
    assert code == 0 and out.isascii()
    _, utf8 = run_on(monkeypatch, "utf-8", argv)
    assert json.loads(out) == json.loads(utf8)


@pytest.mark.parametrize("text, encoding, written", [
    ("✓ ok – fine…", "ascii", "+ ok - fine..."),
    ("✓ ok – fine…", "cp1252", "+ ok – fine…"),  # cp1252 has '–' and '…': kept
    ("±0.02 → σ", "ascii", "+/-0.02 -> \\u03c3"),  # no fallback: escaped
    ("заказ café 💸", "cp1252", "\\u0437\\u0430\\u043a\\u0430\\u0437 café \\U0001f4b8"),
    ("plain", "ascii", "plain"),
    ("bad \udcff name", "utf-8", "bad \\udcff name"),  # a lone surrogate (a file name's undecodable byte)
])
def test_encodable_writes_each_glyph_as_its_fallback_and_escapes_the_rest(text, encoding, written):
    assert encodable(text, encoding) == written
    written.encode(encoding)


def test_json_on_a_utf8_stream_is_written_as_it_is(monkeypatch):
    """JSON_OUT's ensure_ascii made every JSON \\u-escaped on a UTF-8 stream too (predict --json printed 'caf\\u00e9'):
    escapes only where the stream cannot write the text; both parse to the same."""
    _, utf8 = run_on(monkeypatch, "utf-8", ["rules", "--json"])
    assert not utf8.isascii() and "\\u" not in utf8  # literal characters
    for encoding in ("cp1252", "ascii"):
        _, escaped = run_on(monkeypatch, encoding, ["rules", "--json"])
        assert escaped.isascii() and "\\u" in escaped
        assert json.loads(escaped) == json.loads(utf8)

    from loratune.commands._common import json_out

    class Stream:
        def __init__(self, encoding):
            self.encoding = encoding

    assert [json_out(Stream(e))["ensure_ascii"] for e in ("utf-8", "UTF8", "cp1252", "ascii", None, "nope")] == \
        [False, False, True, True, True, True]
    assert json.dumps({"label": "café"}, **json_out(Stream("utf-8"))) == '{\n  "label": "café"\n}'
