"""Datasets: read labelled text from JSONL / CSV / Parquet (or a hub id), build the label space.

Knows nothing of models or training. Every problem a user can cause (a missing file, an empty
file, a missing column, a single class, bytes that are not UTF-8, a row without a label) raises a
`UserError` naming the file, the row and the fix.
"""

from __future__ import annotations

import ast
import codecs
import csv
import hashlib
import heapq
import io
import json
import math
import os
import random
import re
import sys
import tokenize
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from loratune.config import EMBEDDED_DATA, EMBEDDED_SFT_DATA, DataConfig
from loratune.errors import PARSE_ERRORS, UserError, parse_problem, require_file

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def data_suffix(path: Path) -> str:
    """A data file's form, as the loader reads it: its suffix in lower case (train.CSV, a Windows export, is a .csv),
    for a file named by its key and a split's file found in a folder alike."""
    return path.suffix.lower()


# how to turn a file in a form not read into one that is (training's folder check and predict --file say the same)
CONVERT_HINT = "a .gz: `gunzip -k` it; a .tsv: save it as CSV"
SPLIT_NAMES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
CARVED = " (carved)"  # the end of the source of a validation split carved from train (its rows are the train file's)


def where_rows(lines: tuple[int, ...], indices: list[int], rows: tuple[int, ...] = ()) -> str:
    """Rows (0-based indices) as errors name them: the file's lines (1-based, the line a row starts on) where the
    file has lines (JSON Lines, CSV), else 1-based row numbers (Parquet, a JSON array, a hub dataset): `rows`, each
    row's number in its source where given (a subset's: Split.rows), else its place."""
    if lines:
        return ("line " if len(indices) == 1 else "lines ") + ", ".join(str(lines[i]) for i in indices)
    return ("row " if len(indices) == 1 else "rows ") + ", ".join(str(rows[i] if rows else i + 1) for i in indices)


@dataclass(frozen=True)
class Split:
    """One split: texts and, per text, its labels (a 1-tuple for single-label data)."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    source: str
    lines: tuple[int, ...] = ()  # per row, the file line it starts on; empty where the file has no lines (Parquet)
    # per label, the spellings its rows wrote it in ('4.1', '4.10'): _label_text merges them, load_dataset says so
    spellings: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # per row, its 1-based row number in the source where it has no lines, once a subset (a carved validation split,
    # max_*_samples) no longer holds every row in order; empty: each row's place is its number
    rows: tuple[int, ...] = ()
    list_cells: int = 0  # rows whose label cell was a list literal string ("['pin', 'balance']"), read as a list

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def file(self) -> str:
        """The file the rows were read from: a carved validation split's rows are the train file's."""
        return self.source.removesuffix(CARVED)

    def where(self, *indices: int) -> str:
        """Rows (0-based) as the file names them: its lines, else its row numbers (a carved row's in the train file)."""
        return where_rows(self.lines, list(indices), self.rows)

    def label_counts(self) -> Counter:
        return Counter(lab for labs in self.labels for lab in labs)

    def subset(self, indices: list[int], name: str | None = None, source: str | None = None) -> "Split":
        return Split(name or self.name, tuple(self.texts[i] for i in indices),
                     tuple(self.labels[i] for i in indices), source or self.source,
                     tuple(self.lines[i] for i in indices) if self.lines else (),
                     rows=() if self.lines else tuple(self.rows[i] if self.rows else i + 1 for i in indices))


@dataclass(frozen=True)
class LabelSpace:
    """The labels the model predicts: taken from train, sorted, fixed for the run."""

    labels: tuple[str, ...]
    multi_label: bool

    @property
    def index(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    train: Split
    validation: Split
    test: Split | None
    label_space: LabelSpace
    notes: tuple[str, ...] = ()  # what we did that the user should know (carved validation, subsets)
    unseen: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> label -> rows
    # the data config api.prepare read it from (None: built by hand): a verb given this dataset with another cfg.data
    # refuses it (api._dataset), as the run's record would name data it did not train on
    prepared_from: DataConfig | None = field(default=None, compare=False, repr=False)
    prepared_seed: int | None = field(default=None, compare=False, repr=False)  # the seed it was read with (seed_drew)
    # a carved validation split: the classes it has no row of, each with why (uncarved_classes: read off the whole
    # train file, before max_train_samples subsets it), which the carving's note and check_trainable say
    uncarved: dict[str, str | None] = field(default_factory=dict)

    def splits(self) -> dict[str, Split]:
        out = {"train": self.train, "validation": self.validation}
        if self.test is not None:
            out["test"] = self.test
        return out


# ---------------------------------------------------------------------------------------------
# embedded demo data


def embedded_data_dir() -> Path:
    return Path(__file__).parent / "demo_data" / "banking77"


# ---------------------------------------------------------------------------------------------
# reading files


@dataclass(frozen=True)
class RowFile:
    """What a rows file is, for its errors: a prompt set's missing file was told to fix data.train_file and to
    hold labelled text."""
    what: str  # the file as errors name it
    key: str  # the config key(s) that give its path
    rows: str  # what its rows hold
    example: str  # one row as a JSON object


LABELLED_ROWS = RowFile("data file", "data.train_file / dataset_name", "labelled text",
                        '{"text": "...", "label": "..."}')


def read_rows(path: Path, kind: RowFile = LABELLED_ROWS) -> list[dict[str, Any]]:
    """Rows of one file as dicts. Format from the suffix; errors name the file as `kind` says."""
    return read_rows_at(path, kind)[0]


def read_rows_at(path: Path, kind: RowFile = LABELLED_ROWS, pipe: bool = False
                 ) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """Rows of one file as dicts, and per row the file line it starts on (empty for Parquet and a JSON array): a
    blank line or a quoted multi-line CSV text makes a row's number no line number, and errors name lines. `pipe`: a
    named pipe (a FIFO named x.jsonl, `<(cmd)` behind a .csv link) is read too, once, as the file it streams (its
    size is known only once read)."""
    require_file(path, kind.what, f"check the path ({kind.key})", pipe=pipe)
    suffix = data_suffix(path)
    if suffix not in SUFFIXES:
        raise UserError(f"{kind.what} '{path}' has suffix '{suffix}'",
                        f"use one of {', '.join(SUFFIXES)} (JSON Lines, CSV, Parquet)")
    stream = not path.is_file()  # a pipe require_file let through: read once, from start to end
    if not stream and path.stat().st_size == 0:
        raise UserError(f"{kind.what} '{path}' is empty", f"give a file with a header/rows of {kind.rows}")
    if suffix == ".parquet" and not stream:
        return _read_parquet(path, kind), ()
    raw = path.read_bytes()
    if not raw:
        raise UserError(f"{kind.what} '{path}' is empty", f"give a file with a header/rows of {kind.rows}")
    if suffix == ".parquet":  # a footer at the end: read from the bytes streamed
        return _read_parquet(path, kind, io.BytesIO(raw)), ()
    text = decode_utf8(raw, path, kind.what)
    if suffix == ".csv":
        rows, lines = _read_csv(text, path, kind)
    else:
        rows, lines = _read_jsonl(text, path, kind)
    if not rows:
        raise UserError(f"{kind.what} '{path}' has no rows",
                        f"add rows of {kind.rows} (one per line / after the CSV header)")
    return rows, lines


# files that fail UTF-8 by their first bytes, with what they are and how to make them UTF-8 (longest prefix first:
# a UTF-32 LE BOM starts with the UTF-16 LE one); anything else is taken for a one-byte encoding such as Latin-1
_NOT_UTF8 = (
    (b"\x1f\x8b", "gzip-compressed", "decompress it: `gunzip -c '{path}' > fixed{suffix}`"),
    (b"\xff\xfe\x00\x00", "UTF-32 (little-endian BOM)", "`iconv -f utf-32 -t utf-8 '{path}' > fixed{suffix}`"),
    (b"\x00\x00\xfe\xff", "UTF-32 (big-endian BOM)", "`iconv -f utf-32 -t utf-8 '{path}' > fixed{suffix}`"),
    (b"\xff\xfe", "UTF-16 (little-endian BOM)", "`iconv -f utf-16 -t utf-8 '{path}' > fixed{suffix}`"),
    (b"\xfe\xff", "UTF-16 (big-endian BOM)", "`iconv -f utf-16 -t utf-8 '{path}' > fixed{suffix}`"),
)


# UTF-16 written without a BOM decodes as UTF-8 where its every byte is below 0x80 (ASCII, Cyrillic, Arabic, Devanagari,
# Thai: characters up to U+1FFF whose UTF-16 units are a control byte beside a byte below 0x80) or fails UTF-8 at its
# first other byte, then named a one-byte encoding. It is told by decoding its head, never by byte patterns (a NUL
# beside a UTF-8 newline, the 0a byte of 上 U+4E0A or Њ U+040A taken for one):
# - it decodes strictly in its byte order (a unit or a surrogate pair cut at the head's end aside) into text with no
#   C0 control but tab, CR and LF, and holds UTF16_MIN_STRUCTURE or more of a data file's ASCII structure (newlines;
#   a one-line head's JSON or CSV punctuation). A one-byte encoding's bytes decode as UTF-16 too (CJK-like units), but
#   with ASCII only beside a stray NUL, and ASCII read in the wrong byte order is U+xx00, no ASCII at all; where both
#   orders pass, the one with more structure;
# - a head that is valid UTF-8 is UTF-8 unless, besides, UTF16_HIGH_CONTROLS of the bytes on one parity are control
#   bytes (below 0x20: no text holds many), the high bytes of its byte order (odd offsets: little-endian): every
#   character up to U+1FFF has one there (NUL for ASCII, 04 for Cyrillic, 0e for Thai, 09 for Devanagari). A stray
#   NUL, a C string's terminator before each newline (00 0a: one on each side) or NUL padding (U+0000, no text's
#   character in either order) are no UTF-16.
UTF16_SNIFF_BYTES = 4096
UTF16_HIGH_CONTROLS = 0.9  # of one parity's bytes: a CJK character below U+8000 that is valid UTF-8 (丁, 01 4e) has none
UTF16_STRUCTURE = '\n,"{}[]:'  # newlines, and the punctuation of a one-line head (a JSON array, a CSV header)
UTF16_MIN_STRUCTURE = 2  # a NUL stray in a one-byte encoding's file pairs with one ASCII byte: never 2 such characters
UTF16_CONTROLS = frozenset("\t\r\n")  # the only C0 controls a text file holds


def utf16_without_bom(raw: bytes) -> str | None:
    """'utf-16le' or 'utf-16be' where the head of the bytes is UTF-16 text in that byte order and no UTF-8 text (the
    rule above), else None."""
    head = raw[:UTF16_SNIFF_BYTES]
    if b"\x00" not in head:  # every ASCII character of UTF-16 (a newline, a comma, a brace) holds a NUL
        return None
    passing = []
    for order in ("utf-16le", "utf-16be"):
        text = _utf16_text(head, order)
        structure = 0 if text is None else sum(map(text.count, UTF16_STRUCTURE))
        if structure >= UTF16_MIN_STRUCTURE:
            passing.append((structure, order))
    if passing and _decoded(head, "utf-8") is not None:  # UTF-8 too: UTF-16 only where one side is control bytes
        high = {order: sum(b < 0x20 for b in head[side::2]) / len(head[side::2])  # offsets 1, 3, ... and 0, 2, ...
                for order, side in (("utf-16le", 1), ("utf-16be", 0))}
        order = max(high, key=high.__getitem__)
        passing = [p for p in passing if p[1] == order and high[order] >= UTF16_HIGH_CONTROLS]
    return max(passing)[1] if passing else None


def _decoded(head: bytes, encoding: str) -> str | None:
    """The head decoded strictly, a character cut at its end aside (the head ends where UTF16_SNIFF_BYTES does); None
    where it does not decode."""
    try:
        return codecs.getincrementaldecoder(encoding)(errors="strict").decode(head, final=False)
    except UnicodeDecodeError:
        return None


def _utf16_text(head: bytes, order: str) -> str | None:
    """The head decoded in one UTF-16 byte order, where that is text: strict, with no C0 control but tab, CR and LF
    (NUL padding, binary); else None."""
    text = _decoded(head, order)
    return None if text is None or any(c < " " and c not in UTF16_CONTROLS for c in text) else text


def decode_utf8(raw: bytes, path: Path, what: str = "data file") -> str:
    """A data file's bytes as text (a UTF-8 BOM dropped); any other encoding: a UserError with the iconv fix."""
    for magic, what_it_is, fix in _NOT_UTF8:  # none of them starts valid UTF-8: looked for first, as UTF-16 has NULs
        if raw.startswith(magic):
            raise UserError(f"{what} '{path}' is not UTF-8 text: it is {what_it_is} (starts with bytes "
                            f"{' '.join(f'{b:02x}' for b in magic)})",
                            "make it UTF-8 text, e.g. " + fix.format(path=path, suffix=path.suffix))
    utf16 = utf16_without_bom(raw)
    if utf16 is not None:
        raise UserError(f"{what} '{path}' is not UTF-8 text: it looks like {utf16.upper()} without a BOM (NUL bytes, "
                        "which no text holds, beside its ASCII characters)",
                        f"make it UTF-8 text, e.g. `iconv -f {utf16} -t utf-8 '{path}' > fixed{path.suffix}`")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{what} '{path}' is not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start} (line {line})",
            f"re-encode the file as UTF-8, e.g. `iconv -f {one_byte_encoding(raw)} -t utf-8 '{path}' > "
            f"fixed{path.suffix}`",
        ) from None


def one_byte_encoding(raw: bytes) -> str:
    """The one-byte encoding to suggest for bytes that are no UTF-8: cp1252 (Windows' own) where a byte is in
    0x80-0x9F, its printable range (curly quotes, dashes, the euro sign) that Latin-1 reads as invisible C1 controls;
    latin1 otherwise (the two agree on every other byte)."""
    return "cp1252" if any(0x80 <= b <= 0x9F for b in raw) else "latin1"


def _read_csv(text: str, path: Path, kind: RowFile) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    """CSV rows as dicts, and the line each starts on. A field of any length is read (the csv module's default limit
    is 131,072 characters). Refused by their line, never read as something else:
    - a row with more fields than the header (an unquoted comma inside a text: its text cut at the comma, the rest
      taken as its label);
    - a quote never closed (the csv module reads the rest of the file as one field: rows silently swallowed);
    - a header naming a column twice (which of the two was read would be a guess);
    - a row that repeats a header of JOINED_HEADER_MIN_COLUMNS or more, or starts with a byte-order mark (two exports
      joined with `cat`).
    Header names are stripped (`text, label`: pandas' skipinitialspace), so the column is found as 'label'."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    start = 1  # the line the next record starts on: csv's line_num is the line a record ends on
    try:
        for record in reader:
            if not record:  # a blank line (DictReader skips it too)
                start = reader.line_num + 1
                continue
            if header is None:
                header = [h.strip() for h in record]
                sep = next((c for c in ";\t|" if len(header) == 1 and c in header[0]), None)
                if sep is not None:  # one column named 'text;label': the fix said text_column=text;label
                    raise UserError(f"{kind.what} '{path}' line {start} (the header) is one column {header[0]!r}: "
                                    f"its fields are separated by {sep!r}, and a .csv is read comma-separated",
                                    "save it comma-separated (pandas: pd.read_csv(f, sep=...).to_csv(out, "
                                    "index=False)), or as JSON Lines")
                twice = [h for h, n in Counter(header).items() if n > 1 and h]
                if twice:
                    raise UserError(f"{kind.what} '{path}' line {start} (the header) names column(s) "
                                    f"{', '.join(map(repr, twice))} more than once",
                                    "rename or drop the repeated column: only one of them could be read")
            elif record[0].startswith(BOM) or (len(header) >= JOINED_HEADER_MIN_COLUMNS
                                               and [h.strip() for h in record] == header):
                _refuse_joined_csv(record, header, start, path, kind)
            elif len(record) > len(header):
                raise UserError(f"{kind.what} '{path}' line {start} has {len(record)} fields, the header "
                                f"{len(header)}",
                                "quote a text that holds a comma (\"i lost my card, please help\"), or drop the row")
            else:  # a short row's missing fields are None, as DictReader gives them: a row without a label
                rows.append({h: (record[i] if i < len(record) else None) for i, h in enumerate(header)})
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise UserError(f"{kind.what} '{path}' line {start} is not valid CSV ({exc})",
                        "fix the quoting of that line") from None
    if rows:
        _refuse_open_quote(text, rows[-1], lines[-1], path, kind)
    return rows, tuple(lines)


BOM = "\ufeff"  # the byte-order mark an export writes first (Excel's CSV UTF-8): past the file's start, a second file
# a row that repeats the header is a second file's header only where the header has this many columns: a one-column
# file's row "text" under the header "text" is a text (predict --file's "what does text mean"), a row naming every
# column of a wider header is no row anyone writes (a class named 'label' with the text 'text')
JOINED_HEADER_MIN_COLUMNS = 2


def _refuse_joined_csv(record: list[str], header: list[str], start: int, path: Path, kind: RowFile) -> None:
    """Refuse a record that repeats the header, or that starts with a byte-order mark: two exports joined with `cat`,
    the second one's header read as a row (a class named 'label', its text the column name) and its mark as text."""
    bom = record[0].startswith(BOM)
    repeat = [h.strip() for h in [record[0].removeprefix(BOM), *record[1:]]] == header
    what = ("repeats the header" + (" after a byte-order mark (U+FEFF)" if bom else "") if repeat else
            "starts with a byte-order mark (U+FEFF), the first character of a file")
    raise UserError(f"{kind.what} '{path}' line {start} {what}: two files joined into one (e.g. with `cat`)? It would "
                    "be read as a row" + (" (the column names as a text and its label)" if repeat else ""),
                    "drop that line, and join CSV files keeping the first one's header only: `tail -n +2 second.csv "
                    ">> first.csv`" if repeat else "remove the byte-order mark from the start of that line")


def _refuse_open_quote(text: str, last: dict[str, Any], start: int, path: Path, kind: RowFile) -> None:
    """A quote opened and never closed runs to the end of the file, so it can only be in the last record: read that
    record again strictly (the lenient reader closes the field at the end of the data without a word)."""
    raw = io.StringIO(text, newline="").readlines()[start - 1:]
    try:
        list(csv.reader(io.StringIO("".join(raw), newline=""), strict=True))
    except csv.Error as exc:
        if "end of data" not in str(exc):  # another irregularity (`"a"b`) the lenient reading keeps as before
            return
        fields = [v for v in last.values() if v is not None]
        opened = start + sum(v.count("\n") for v in fields[:-1])  # the line the last (unclosed) field starts on
        raise UserError(f"{kind.what} '{path}' line {opened} opens a quote that is never closed: the rest of the file "
                        f"({len(raw)} line(s)) would be read as one field",
                        "close the quote where the field ends, or drop the stray \" (a quote inside a quoted field "
                        "is written twice: \"he said \"\"hi\"\"\")") from None


def _read_jsonl(text: str, path: Path, kind: RowFile) -> tuple[list[dict[str, Any]], tuple[int, ...]]:
    stripped = text.lstrip()
    if data_suffix(path) == ".json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except PARSE_ERRORS as exc:
            raise UserError(f"{kind.what} '{path}' is not valid JSON: {parse_problem(exc)}", "fix the JSON") from None
        bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
        if bad is not None:  # as a JSON Lines line that is no object: refused, never dropped unsaid
            raise UserError(f"{kind.what} '{path}' entry {bad + 1} of its array is not a JSON object",
                            f"write each entry as an object, e.g. {kind.example}")
        return data, ()
    rows, lines = [], []
    # lines end at \n alone: str.splitlines() also breaks at U+2028, U+2029 and U+0085, which JSON strings may hold
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except PARSE_ERRORS as exc:
            why = getattr(exc, "msg", None) or parse_problem(exc)  # JSONDecodeError's msg: no position (the line is said)
            raise UserError(f"{kind.what} '{path}' line {n} is not valid JSON ({why})",
                            f"write one JSON object per line, e.g. {kind.example}") from None
        if not isinstance(obj, dict):
            raise UserError(f"{kind.what} '{path}' line {n} is not a JSON object", "write one object per line")
        rows.append(obj)
        lines.append(n)
    return rows, tuple(lines)


def _read_parquet(path: Path, kind: RowFile, source: Any = None) -> list[dict[str, Any]]:
    """`source`: the file's bytes where it was a stream (a file object), else the file at `path` is read."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source if source is not None else path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        raise UserError(f"{kind.what} '{path}' could not be read as Parquet: {exc}", "check the file") from None
    rows = table.to_pylist()
    if not rows:
        raise UserError(f"{kind.what} '{path}' has no rows", f"add rows of {kind.rows}")
    return rows


NONE_BESIDE_SHOWN = 5  # rows named when the none label stands beside another label


def parse_rows(rows: list[dict[str, Any]], cfg: DataConfig, source: str, name: str,
               lines: tuple[int, ...] = ()) -> Split:
    """Pick the text and label columns; split delimited labels; reject rows we cannot use, each named by its file
    line (`lines`, from read_rows_at) or, where the file has no lines, its row number."""
    cols = list(dict.fromkeys(k for r in rows for k in r))  # every row's keys: JSON Lines rows may differ
    for col, key in ((cfg.text_column, "data.text_column"), (cfg.label_column, "data.label_column")):
        # a column some row has is the file's: a row without it is that row's problem, named by its line below
        if col not in cols:
            other = cfg.label_column if key == "data.text_column" else cfg.text_column
            guess = suggest_column(rows, "text" if key == "data.text_column" else "label", exclude=other)
            # names shown quoted (repr) where a space or an invisible character at their end would be lost: the fix
            # says the value to write (`text_column="text "`), never one that repeats the error
            fix = (f"set {key} to one of the columns, e.g. {key.split('.')[1]}={_column_value(guess)}"
                   if guess is not None else
                   f"add a '{col}' column: the file's only column, '{other}', cannot be both text and label")
            shown = ", ".join(map(_column_name, cols))
            raise UserError(f"data file '{source}' has no column '{col}' (columns: {shown})", fix)
    listed = _list_cells(rows, cfg, source, lines)
    rows = [{**row, cfg.label_column: listed[i]} if i in listed else row for i, row in enumerate(rows)]
    texts, labels = [], []
    spellings: dict[str, set[str]] = {}
    for i, row in enumerate(rows):
        at = f"data file '{source}' {where_rows(lines, [i])}"
        text = row.get(cfg.text_column)
        if text is None:
            raise UserError(f"{at} has no value in column '{cfg.text_column}'", "fill in the text or remove the row")
        if not isinstance(text, str):  # a list, object or number: its str() trained as if it were the text
            raise UserError(f"{at} has a '{cfg.text_column}' of {text!r:.60}, not a string",
                            f"write the text as a string, e.g. {{\"{cfg.text_column}\": \"...\"}}")
        check_characters(text, at)
        lab = row.get(cfg.label_column)
        try:
            labs = labels_of(lab, cfg.label_delimiter)
        except LabelShapeError as exc:
            raise UserError(f"{at} has {lab!r:.60} in column '{cfg.label_column}': {exc}", LABEL_SHAPE_FIX) from None
        if not labs and cfg.none_label:  # the explicit none / out-of-scope label (multi-label decoding)
            labs = (cfg.none_label,)
        if not labs and cfg.multi_label is not True:
            raise UserError(f"{at} has no label in column '{cfg.label_column}'",
                            "give every row a label (multi-label data may use an empty list with multi_label=true)")
        for lab_text in labs:
            check_characters(lab_text, f"{at} label")
            if ("\n" in lab_text or "\r" in lab_text) and source.lower().endswith(".csv"):
                # a CSV quote opened in the label and closed lines later (a JSON label writes its line break as \n:
                # the task decides whether it can be a label, e.g. data.label_format=generate refuses it)
                raise UserError(f"{at} has a label that spans lines ({lab_text!r:.60})",
                                "a label is one line: close the quote where the label ends, or drop the stray quote")
            hidden = next((ch for ch in lab_text if not ch.isspace() and unicodedata.category(ch) in ("Cc", "Cf")),
                          None)
            if hidden is not None:  # 'bal\u200bance' printed as 'balance' beside it: two classes that look one
                raise UserError(f"{at} has a label with the invisible character U+{ord(hidden):04X} "
                                f"({lab_text.encode('unicode_escape').decode('ascii')!r:.80})",
                                "remove the character from the label (a zero-width space or a control character is "
                                "no part of a label's name)")
        for written in _written_labels(lab, cfg.label_delimiter):
            spellings.setdefault(_label_text(written), set()).add(written.strip())
        texts.append(text)
        labels.append(labs)
    _refuse_joined_labels(rows, labels, cfg, source, lines)
    # the none label is exclusive (metrics.decode never answers it beside another label): a row with both could never
    # be predicted right, and trained the none label up on a text that has an intent
    beside = [i for i, labs in enumerate(labels) if cfg.none_label and cfg.none_label in labs and len(labs) > 1]
    if beside:
        shown = where_rows(lines, beside[:NONE_BESIDE_SHOWN]) + (f" and {len(beside) - NONE_BESIDE_SHOWN} more"
                                                                   if len(beside) > NONE_BESIDE_SHOWN else "")
        raise UserError(f"data file '{source}' {shown} {'has' if len(beside) == 1 else 'have'} the none label "
                        f"'{cfg.none_label}' beside another label (e.g. {list(labels[beside[0]])!r:.60}): the none "
                        "label stands alone", f"drop '{cfg.none_label}' from those rows (or their other labels), or "
                        "unset data.none_label if it is an ordinary label")
    return Split(name, tuple(texts), tuple(labels), source, tuple(lines),
                 tuple((lab, tuple(sorted(spelt))) for lab, spelt in sorted(spellings.items())),
                 list_cells=len(listed))


class JoinedLiteralsError(ValueError):
    """A list cell with two string literals side by side that numpy would not write (beside items separated by
    commas, "['a' 'b', 'c']", or touching, "['a''b']"): neither a list's repr nor numpy's, its labels 'ab' and 'c'
    (Python joins side-by-side literals) or 'a', 'b' and 'c' would be a guess."""


def _list_literal(value: Any) -> list | None:
    """A string cell that is a list literal, as that list: Python's or JSON's ("['card_lost', 'balance']", as pandas'
    to_csv writes a list cell; '["pin"]'; '[]'), or numpy's (_numpy_items: "['card_lost' 'balance']", as to_csv
    writes an array); None for any other value ('pin', '[pin]', a list itself). Raises JoinedLiteralsError for a
    cell that is neither: string literals side by side are never joined into one label, as ast.literal_eval would
    ('card_lostbalance')."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    items = _numpy_items(text)
    if items is not None:
        return items
    if _joins_literals(text):
        raise JoinedLiteralsError(text)
    for parse in (ast.literal_eval, json.loads):  # Python's repr ('a', None), JSON's ("a", null)
        try:
            parsed = parse(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        return parsed if isinstance(parsed, list) else None
    return None


def _literal_tokens(text: str) -> list[tokenize.TokenInfo] | None:
    """The tokens of a bracketed cell that carry its items (line breaks and the end marker dropped; inside brackets
    a line break is whitespace), or None where Python's tokenizer cannot read it."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError):
        return None
    return [t for t in tokens if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER)]


def _numpy_items(text: str) -> list | None:
    """The items of numpy's str of a 1-d array of strings or numbers: what pandas' to_csv writes for the arrays
    read_parquet gives a list column ("['card_lost' 'balance']", "[ 2 27]", wrapped onto a new line past 75
    characters): Python literals (a '-' before a number) with whitespace, and no comma, between them. None for any
    other text (a list with commas among them)."""
    tokens = _literal_tokens(text)
    if not tokens or tokens[0].string != "[" or tokens[-1].string != "]":
        return None
    items: list[str] = []
    sign, end = None, tokens[0].end  # a '-' waiting for its number; where the last item ended
    for tok in tokens[1:-1]:
        if tok.string == "-" and sign is None:
            sign = tok
            continue
        if tok.type not in (tokenize.STRING, tokenize.NUMBER) or sign and (tok.type != tokenize.NUMBER
                                                                            or sign.end != tok.start):
            return None
        if items and (sign or tok).start == end:  # touching ('a''b'): numpy puts a space between items
            return None
        items.append(("-" if sign else "") + tok.string)
        sign, end = None, tok.end
    if sign:
        return None
    try:
        return [ast.literal_eval(item) for item in items]
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _joins_literals(text: str) -> bool:
    """Whether a bracketed cell writes two string literals side by side, which Python's literal_eval joins into one
    string ("['a' 'b', 'c']" -> ['ab', 'c'])."""
    tokens = _literal_tokens(text) or []
    return any(a.type == b.type == tokenize.STRING for a, b in zip(tokens, tokens[1:]))


LIST_CELLS_NOTE = ("label cells written as list literals (e.g. {example}, as pandas' to_csv writes a list; a numpy "
                   "array's, without the commas, too) are read as lists of labels")
# the way to write a column of lists that no reading of a cell can get wrong
REAL_LISTS_FIX = ("save the data as JSON Lines or Parquet with real lists (pandas: df.to_json('train.jsonl', "
                  "orient='records', lines=True))")


def _list_cells(rows: list[dict[str, Any]], cfg: DataConfig, source: str,
                lines: tuple[int, ...]) -> dict[int, list]:
    """Per row index, the list its label cell writes as a list literal string (_list_literal), where the file's
    label cells are such lists: a CSV saved from a pandas column of lists holds "['card_lost', 'balance']" (of numpy
    arrays, "['card_lost' 'balance']"), and read as text each list was a class of its own ("['pin']" answered with
    its brackets). Any format's string cells, not only a CSV's: a JSON Lines file of those strings is the same
    data. A file that writes some label
    cells as lists and others as plain labels is refused: whether "['pin']" there is a row's labels or the name of
    one label would be a guess."""
    strings = {i: row.get(cfg.label_column) for i, row in enumerate(rows)}
    strings = {i: v for i, v in strings.items() if isinstance(v, str) and v.strip()}
    parsed, joined = {}, []
    for i, v in strings.items():
        try:
            lst = _list_literal(v)
        except JoinedLiteralsError:
            joined.append(i)
            continue
        if lst is not None:
            parsed[i] = lst
    if joined:
        one = len(joined) == 1
        raise UserError(f"data file '{source}' {where_rows(lines, joined[:NONE_BESIDE_SHOWN])} "
                        f"{'has a label cell' if one else 'have label cells'} of column '{cfg.label_column}' with "
                        f"quoted labels side by side that {'is' if one else 'are'} neither a list's repr (a comma "
                        "between every two labels) nor a numpy array's (a space between every two) (e.g. "
                        f"{strings[joined[0]]!r:.60}): whether the labels side by side are one label or several is "
                        "a guess",
                        "write each cell's labels with a comma between every two (e.g. ['card_lost', 'balance']), "
                        f"or {REAL_LISTS_FIX}")
    plain = [i for i in strings if i not in parsed]
    if parsed and plain:
        first, other = next(iter(parsed)), plain[0]
        raise UserError(f"data file '{source}' writes some label cells of column '{cfg.label_column}' as lists "
                        f"({where_rows(lines, list(parsed)[:NONE_BESIDE_SHOWN])}, e.g. {strings[first]!r:.60}) and "
                        f"others as plain labels ({where_rows(lines, plain[:NONE_BESIDE_SHOWN])}, e.g. "
                        f"{strings[other]!r:.60}): whether a list cell is a row's labels or one label's name is a "
                        "guess",
                        "write every row's labels the one way: each cell a list (e.g. "
                        f"{[_label_text(strings[other])]!r}), or {REAL_LISTS_FIX}")
    return parsed


# characters a row's labels are joined with when a list was written as one string ("card_lost,balance")
LABEL_JOINERS = (",", ";", "|")


def _refuse_joined_labels(rows: list[dict[str, Any]], labels: list[tuple[str, ...]], cfg: DataConfig, source: str,
                          lines: tuple[int, ...]) -> None:
    """Refuse a string label whose parts, split on a LABEL_JOINERS character, are all labels of other rows, in
    multi-label data without data.label_delimiter (rows written as lists, or multi_label=true): "card_lost,balance"
    became a class of its own, trained apart from card_lost and balance, and nothing said so."""
    if cfg.label_delimiter is not None:
        return
    raw = [row.get(cfg.label_column) for row in rows]
    listed = any(_container(v) for v in raw)  # data.label_delimiter splits strings only: a list row is not split
    if cfg.multi_label is not True and not listed:
        return
    known = {lab for labs in labels for lab in labs}
    joined = []
    for i, value in enumerate(raw):
        if not isinstance(value, str):
            continue
        for sep in LABEL_JOINERS:
            parts = [_label_text(p) for p in value.split(sep) if p.strip()]
            if len(parts) > 1 and all(p in known for p in parts):
                joined.append((i, sep, parts))
                break
    if joined:
        i, sep, parts = joined[0]
        raise UserError(f"data file '{source}' {where_rows(lines, [j for j, _, _ in joined[:NONE_BESIDE_SHOWN]])} "
                        f"{'has' if len(joined) == 1 else 'have'} a label that joins other rows' labels with "
                        f"{sep!r} (e.g. {rows[i][cfg.label_column]!r:.60}): it would be a class of its own",
                        # a CSV cell is read as a list only where every label cell is one (_list_cells): the
                        # delimiter is the way that needs no rewrite of the other cells, a character the labels do
                        # not contain
                        (f"set data.label_delimiter='{sep}' (every row's labels one delimited string); if it is one "
                         f"label that contains {sep!r}, set data.label_delimiter to a character no label contains "
                         f"(e.g. '{next(c for c in LABEL_JOINERS + ('#',) if c != sep)}')"
                         if str(source).lower().endswith((".csv", ".tsv")) else
                         f"write the labels as a list, e.g. {json.dumps(parts)}" + (
                            "" if listed else f", or set data.label_delimiter='{sep}' (every row's labels one "
                            "delimited string)")
                         # a list's strings are never split or checked here: the way to keep a label with a comma
                         + f"; if it is one label that contains {sep!r}, write it as a list of one, e.g. "
                         f"{json.dumps([rows[i][cfg.label_column]])}"))


def _written_labels(value: Any, delimiter: str | None) -> list[str]:
    """A row's labels as the file wrote them (strings only: a JSON number has one spelling per value), for the note
    on spellings merged into one label."""
    if isinstance(value, str):
        return [p for p in value.split(delimiter) if p.strip()] if delimiter else [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, str) and v.strip()]
    return []


def merged_spellings_note(splits: list[Split]) -> str | None:
    """A note naming the labels that rows wrote in more than one way ('4.1' and '4.10', 'café' composed and
    decomposed), each trained and scored as one label (_label_text); None when every label has one spelling."""
    spelt: dict[str, set[str]] = {}
    for sp in splits:
        for lab, written in sp.spellings:
            spelt.setdefault(lab, set()).update(written)
    merged = {lab: sorted(w) for lab, w in sorted(spelt.items()) if len(w) > 1}
    if not merged:
        return None
    shown = [f"{' / '.join(map(repr, w))} -> {lab!r}" for lab, w in list(merged.items())[:5]]
    return (f"labels written in more than one way are one label each ({len(merged)}): {'; '.join(shown)}"
            f"{'; ...' if len(merged) > 5 else ''} (numbers by their value, text by its NFC form); give them "
            "distinct names if they are distinct classes")


def _column_name(col: Any) -> str:
    """A column name as errors list it: bare where plain, quoted (repr) where a space, quote or invisible character
    in it would not show."""
    text = str(col)
    return text if re.fullmatch(r"[\w.\-]+", text) else repr(text)


def _column_value(col: str) -> str:
    """A column name as the value of a key=value override: quoted where it would not survive unquoted."""
    return col if re.fullmatch(r"[\w.\-]+", col) else json.dumps(col)


_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds a surrogate only unpaired: JSON's pairs decode to one char
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that was no UTF-8, as surrogateescape hands it over


def check_characters(text: str, where: str) -> None:
    """Refuse a text with a lone UTF-16 surrogate (U+D800..U+DFFF; JSON's "\\ud83d" without its pair, half an emoji
    cut off): it is no character, cannot be written as UTF-8 nor tokenized, and failed deep in training or scoring."""
    m = _SURROGATE.search(text)
    if m is not None:
        before = text[max(0, m.start() - 20):m.start()].encode("unicode_escape").decode("ascii")
        raise UserError(f"{where} has a lone surrogate U+{ord(m.group()):04X} at character {m.start() + 1} "
                        f"(after {before!r})",
                        "remove the character or restore its pair (e.g. \\ud83d\\ude00 is one emoji)")


def check_undecoded(text: str, where: str) -> None:
    """Refuse a text holding bytes that were no UTF-8 as Python hands them over (surrogateescape, U+DC80..U+DCFF: a
    command-line argument, os.fsdecode, bytes.decode('utf-8', 'surrogateescape')), named by the byte: check_characters
    took them for half an emoji."""
    if not _ESCAPED_BYTE.search(text):  # (a regex: api.predict checks every text it is given)
        return
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes as given
        raw.decode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate no byte stands for: check_characters names it
        return
    except UnicodeDecodeError as exc:
        raise UserError(f"{where} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at position {exc.start})",
                        "give it as UTF-8: set the terminal to UTF-8 and type it again, or convert it (`iconv -f "
                        "cp1252 -t utf-8`, or in Python b.decode('cp1252')) and pass it in a file with --file") from None


# column names people give their text and their labels, most likely first
TEXT_NAMES = ("text", "sentence", "utterance", "query", "question", "content", "message", "input", "review")
LABEL_NAMES = ("label", "labels", "intent", "intents", "category", "class", "target", "tag", "tags", "topic", "y")


def suggest_column(rows: list[dict[str, Any]], role: str, exclude: str | None = None) -> str | None:
    """The column most likely to hold the texts (role 'text') or the labels ('label'): a familiar name
    first, else by shape (texts: the longest strings; labels: the fewest distinct values). Never `exclude` (the
    other role's column: texts suggested as labels trained every text as its own class); None when no other."""
    cols = [c for c in dict.fromkeys(k for r in rows[:500] for k in r) if c != exclude]
    if not cols:
        return None
    names = TEXT_NAMES if role == "text" else LABEL_NAMES
    for name in names:
        for c in cols:
            if str(c).lower() == name:
                return str(c)
    sample = rows[:500]

    def mean_len(c) -> float:
        return sum(len(str(r.get(c, ""))) for r in sample) / max(1, len(sample))

    def distinct(c) -> int:
        return len({json.dumps(r.get(c), sort_keys=True, default=str) for r in sample})

    return str(max(cols, key=mean_len) if role == "text" else min(cols, key=lambda c: (distinct(c), -mean_len(c))))


# a number in plain decimal form, as a CSV cell gives every label as text ("3.0", "-1.50")
_PLAIN_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")


def label_form(text: str) -> str:
    """The one Unicode form of a label (NFC): 'café' typed (é) and 'café' pasted from a macOS file name (e + U+0301)
    print alike and are one class. Labels read back from a saved run (label_map.json, written before labels were
    normalised) pass through it too, so an older run still scores its own data."""
    return unicodedata.normalize("NFC", text)


def _label_text(value: Any) -> str:
    """A label as text, one spelling per number whatever the format: a whole number written as a float (JSON 3.0, a
    pandas column with a gap, a CSV "3.0") is the class of its int ("3"), "1.50" that of 1.5, never a class of its
    own; NaN is no label. Any other form stays text as written: "007" or "1e3" (a leading zero marks a code, not a
    quantity: "007" and "7" may well be two classes, and no JSON number is written so). Text is NFC-normalised."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer():
            return str(int(value))
        return str(value)
    text = label_form(str(value).strip())
    if _PLAIN_DECIMAL.fullmatch(text):  # the fraction's trailing zeros dropped, as str(float) writes it
        whole, frac = text.split(".")
        text = f"{whole}.{frac.rstrip('0')}" if frac.rstrip("0") else whole
    return "0" if text == "-0" else text


class LabelShapeError(ValueError):
    """A label value that is no label: an object, or a list inside the row's list of labels."""


LABEL_SHAPE_FIX = ("write a label as a string or number, or a row's labels as a flat list of them, e.g. "
                   '"label": "pin" or "label": ["pin", "balance"]')


def _container(value: Any) -> bool:
    return isinstance(value, (dict, list, tuple, set)) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0)


def labels_of(value: Any, delimiter: str | None) -> tuple[str, ...]:
    """A row's labels, in their order, each once: a row's label set ([pin, pin] is one pin; counted twice it
    inflated the class counts and made a single-label row look compound). Raises LabelShapeError for an object or a
    nested list (its Python repr, "['balance']" or "{'a': 1}", trained as a label of its own)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):  # NaN: pandas' and JSON's missing value
        return ()
    if isinstance(value, dict):
        raise LabelShapeError("an object is no label (a label is a string or a number)")
    if isinstance(value, (list, tuple)):
        inner = next((v for v in value if _container(v)), None)
        if inner is not None:
            raise LabelShapeError(f"{inner!r:.40} inside it is no label (a label is a string or a number)")
        return tuple(dict.fromkeys(_label_text(v) for v in value if v is not None and _label_text(v) != ""))
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        return labels_of(value.tolist(), delimiter)
    if delimiter and isinstance(value, str):
        return tuple(dict.fromkeys(_label_text(p) for p in value.split(delimiter) if p.strip()))
    s = _label_text(value)
    return (s,) if s else ()


def find_split_file(folder: Path, split: str) -> Path | None:
    """The file of a split in a dataset folder, its name read case aside (TRAIN.CSV is the train split's .csv, as
    data.train_file reads it: data_suffix); two candidates (train.jsonl beside train.csv) are refused: which one
    trained would be a guess no record shows."""
    stems = SPLIT_NAMES[split]
    entries = sorted(folder.iterdir())
    # a split's name on what is no regular file (a broken symlink, a FIFO, a folder): passed over, validation.jsonl
    # was carved from train ("no validation split given") and a train.jsonl FIFO read as "no train file"
    odd = [p for p in entries if not p.is_file() and p.stem.lower() in stems and data_suffix(p) in SUFFIXES]
    if odd:
        raise UserError(f"data folder '{folder}' holds {', '.join(f'{p.name}, {_not_a_file(p)}' for p in odd)}: "
                        f"the {split} split cannot be read from it",
                        f"put the {split} file itself there (a symlink must point at an existing file), name the "
                        f"file to read with data.{split}_file, or move {'them' if len(odd) > 1 else 'it'} out of the "
                        "folder"
                        + (" to carve validation from train" if split == "validation" else ""))
    files = [p for p in entries if p.is_file()]
    found = sorted((p for p in files if p.stem.lower() in stems and data_suffix(p) in SUFFIXES),
                   key=lambda p: (stems.index(p.stem.lower()), SUFFIXES.index(data_suffix(p))))
    if len(found) > 1:
        raise UserError(f"data folder '{folder}' holds {len(found)} files for the {split} split: "
                        f"{', '.join(f.name for f in found)}",
                        f"keep one of them in the folder, or name the one to use with data.{split}_file")
    if not found:  # a split's file in a form not read (train.tsv, validation.jsonl.gz): named, never passed over
        unread = [p.name for p in files if p.name.lower().startswith(tuple(f"{stem}." for stem in stems))]
        if unread:
            raise UserError(f"data folder '{folder}' holds {', '.join(unread)} for the {split} split, a form the "
                            f"loader does not read (it reads {', '.join(SUFFIXES)})",
                            f"convert it ({CONVERT_HINT}), or move it out of the folder"
                            + (" to carve validation from train" if split == "validation" else ""))
    return found[0] if found else None


def _not_a_file(path: Path) -> str:
    """What a path that is no regular file is, in a few words."""
    import stat

    if path.is_symlink() and not path.exists():
        return f"a broken symlink (to '{os.readlink(path)}', which does not exist)"
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"not readable ({exc.strerror or exc})"
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "something")
    return f"{kind}, not a regular file"


def parse_file(path: Path, cfg: DataConfig, name: str) -> Split:
    """One split from one file, its rows numbered by the file's lines."""
    rows, lines = read_rows_at(path)
    return parse_rows(rows, cfg, str(path), name, lines)


# the ClassLabel id `datasets` gives a row without a label (ClassLabel accepts -1..n-1; GLUE/SST-2 test splits are all
# -1, their labels kept private): no class, and never an index into the names (names[-1] read it as the last class)
HUB_UNLABELLED = -1


def _hub_unlabelled(value: Any, listed: bool) -> str | None:
    """A hub row's ClassLabel value: 'none' where it has no label (the id HUB_UNLABELLED or null; a list of only
    those), 'some' where a list holds one beside a class's id, None where every id is a class's (an empty list too:
    a multi-label row of no class)."""
    if not listed or value is None:
        return "none" if value in (None, HUB_UNLABELLED) else None
    hits = sum(v in (None, HUB_UNLABELLED) for v in value)
    return None if not hits else "none" if hits == len(value) else "some"


def _load_hub(cfg: DataConfig) -> tuple[dict[str, Split], list[str]]:
    """The hub dataset's splits, ClassLabel ids turned into their names, and the notes to say of them: a split
    without labels (every row's id HUB_UNLABELLED) is not read, so never scored against invented labels; one with
    some unlabelled rows is refused (its score would count them as errors or as a class)."""
    try:
        import datasets  # noqa: F401  (optional dependency, for online users)
    except ImportError:
        raise UserError(f"dataset_name '{cfg.dataset_name}' is not a local folder and the `datasets` package "
                        "is not installed", "pip install datasets (and be online), or point dataset_name at a "
                        "folder with train/validation/test files") from None
    from datasets import load_dataset as hf_load

    from loratune.models import hub_reason

    try:
        dd = hf_load(cfg.dataset_name)
    except Exception as exc:
        raise UserError(f"dataset_name '{cfg.dataset_name}' is not a local folder (no such path here), and it could "
                        f"not be loaded as a hub dataset: {hub_reason(exc)}",
                        "check the path; for a hub dataset check the id and be online, or use local files") from None
    out, notes = {}, []
    for split, aliases in SPLIT_NAMES.items():
        if getattr(cfg, f"{split}_file"):  # named by its own key: the hub's split is not read (as a folder's file)
            continue
        for a in aliases:
            if a in dd:
                ds = dd[a]
                rows = ds.to_list()
                source = f"{cfg.dataset_name}[{a}]"
                label_feature = ds.features.get(cfg.label_column)
                listed = getattr(label_feature, "feature", None)  # List/Sequence(ClassLabel): multi-label ids
                names = getattr(label_feature if listed is None else listed, "names", None)
                if names:  # ClassLabel ints -> names
                    # a row with no label: its id (single-label) or every id in its list (multi-label) HUB_UNLABELLED
                    # or null; a list that holds one beside a class's id has labels, and an unlabelled id too
                    marks = [_hub_unlabelled(r[cfg.label_column], listed is not None) for r in rows]
                    unlabelled = [i for i, m in enumerate(marks) if m]
                    col = cfg.label_column
                    said = (f"'{col}' is {HUB_UNLABELLED} or null, a ClassLabel's unlabelled row" if listed is None else
                            f"'{col}' holds {HUB_UNLABELLED} or null, a ClassLabel's id for no label")
                    if unlabelled and all(m == "none" for m in marks):
                        if split == "train":
                            raise UserError(f"{source} has no labels (every row's {said}): nothing to train on",
                                            "set data.train_file to labelled training data")
                        notes.append(f"{source} has no labels (every row's {said}): not read, " +
                                     ("validation is carved from train" if split == "validation" else
                                      "there is no test split to score (set data.test_file to a labelled one)"))
                        break
                    if unlabelled:
                        shown = where_rows((), unlabelled[:NONE_BESIDE_SHOWN]) + (
                            f" and {len(unlabelled) - NONE_BESIDE_SHOWN} more" if len(unlabelled) > NONE_BESIDE_SHOWN
                            else "")
                        one = len(unlabelled) == 1
                        what = ((f"{'has' if one else 'have'} no label" if listed is None else
                                 f"{'holds' if one else 'hold'} an unlabelled id") + f" ({said})")
                        keep = (f"r['{col}'] not in ({HUB_UNLABELLED}, None)" if listed is None else
                                f"r['{col}'] is not None and "
                                f"all(v not in ({HUB_UNLABELLED}, None) for v in r['{col}'])")
                        raise UserError(f"{source} {shown} of {len(rows)} {what}: a split with unlabelled "
                                        + ("rows" if listed is None else "ids") + " cannot be "
                                        + ("trained on" if split == "train" else "scored"),
                                        f"save the {a} split's labelled rows to a file (datasets: ds.filter("
                                        f"lambda r: {keep}).to_json('{split}.jsonl')) and set data.{split}_file to it")
                    for r in rows:
                        ids = r[cfg.label_column]
                        r[cfg.label_column] = names[ids] if listed is None else [names[i] for i in ids]
                out[split] = parse_rows(rows, cfg, source, split)
                break
    return out, notes


# ---------------------------------------------------------------------------------------------
# what training needs beyond what can be read (assess reads and reports the same data instead)

MIN_TRAIN_ROWS = 2  # one optimizer step needs a row, a classifier two classes
MIN_VALIDATION_ROWS = 1  # every evaluation point scores validation


# characters that show nothing: spaces (Zs), controls (Cc: NUL, BEL, ESC) and format characters (Cf: zero-width
# space/joiner, BOM, direction marks); a text of only these is tokenized to [CLS][SEP], nothing to learn or classify
INVISIBLE_CATEGORIES = frozenset({"Zs", "Cc", "Cf"})


def has_visible(text: str) -> bool:
    """Whether a text has a character that shows (neither whitespace nor of INVISIBLE_CATEGORIES): the one test of an
    empty text, for training, evaluation, assess and predict alike."""
    return any(not ch.isspace() and unicodedata.category(ch) not in INVISIBLE_CATEGORIES for ch in text)


def empty_text_problems(dataset: "Dataset", only: str | None = None) -> list[str]:
    """Each split's empty texts (no visible character: has_visible), named by the file and its lines (a carved
    validation split's rows by the train file's lines, not their place in the carved split): what no task can learn
    from or score. `only`: that split's alone."""
    problems: list[str] = []
    for name, sp in dataset.splits().items():
        if only is not None and name != only:  # the one split a command scores (evaluate)
            continue
        empty = [i for i, t in enumerate(sp.texts) if not has_visible(t)]
        if empty and len(empty) == len(sp):
            problems.append(f"{name}: every text in '{sp.file}' is empty ({len(sp)} rows): check data.text_column")
        elif empty:
            where = sp.where(*empty[:8]) + (", ..." if len(empty) > 8 else "")
            problems.append(f"{name}: {len(empty)} empty text(s) in '{sp.file}' ({where}): drop them or "
                            "fill them in")
    return problems


def check_trainable(dataset: "Dataset") -> None:
    """Raise one UserError naming every problem training would crash on or silently get wrong:
    empty texts (what `loratune assess` calls an error), a split too small to train on or to score."""
    problems = empty_text_problems(dataset)
    if len(dataset.train) < MIN_TRAIN_ROWS:
        problems.append(f"train: {len(dataset.train)} row(s); training needs at least {MIN_TRAIN_ROWS}")
    if len(dataset.validation) < MIN_VALIDATION_ROWS:
        carved = dataset.validation.source.endswith(CARVED)
        causes = dataset.uncarved  # the carving's, from the whole train file: a class cut to one row by
        # max_train_samples was no 'one row' to the carving; claimed only where every class has a cause
        named = {row_class(labs) for labs in dataset.train.labels} <= causes.keys() and all(causes.values())
        problems.append("validation: 0 rows" + (
            f": no validation file was given and no class can give one to carve ({CARVE_RULE}"
            + ("; a multi-label row counts under its first label" if dataset.label_space.multi_label else "")
            + f"): {said_causes(causes)}" if carved and named else
            ": no validation file was given and none was carved from train" if carved else ""))
    if problems:
        raise UserError(f"the data cannot be trained on ({len(problems)} problem(s)):\n"
                        + "\n".join(f"  - {p}" for p in problems),
                        "fix the rows named above; give a validation file (data.validation_file) when classes are "
                        "this small or their texts this repeated")


# ---------------------------------------------------------------------------------------------
# building the dataset


def seed_drew(dataset: Any, cfg: DataConfig) -> str | None:
    """What of a dataset (data.Dataset or sft_data.SFTDataset) the seed it was read with drew: its carved validation
    split, its max_*_samples subsets; None where the same data read with any seed gives the same rows."""
    # a max_*_samples subset is drawn only where the split was longer than the cap (load_dataset): the split now as
    # long as it (a file of exactly that many rows reads as drawn: refused where it need not be, never let through)
    drew = (["the carved validation split"] if dataset.validation.source.endswith(CARVED) else []) + [
        f"the {key} subset" for key, split in (("max_train_samples", dataset.train),
                                               ("max_eval_samples", dataset.validation))
        if getattr(cfg, key) and len(split) >= getattr(cfg, key)]
    return " and ".join(drew) or None


def prepared_apart(dataset: Any, cfg: DataConfig, seed: int) -> tuple[list[str], str | None]:
    """How a dataset differs from the data a run or study names (`cfg`, read with `seed`): the data keys whose values
    differ from those it was prepared from (api.prepare's prepared_from), and what its own seed drew where that seed
    is another (seed_drew; None where it drew nothing). ([], None) for that data, or one whose source is not known."""
    source = getattr(dataset, "prepared_from", None)
    keys = [f.name for f in fields(source) if getattr(source, f.name) != getattr(cfg, f.name)] if source else []
    own = getattr(dataset, "prepared_seed", None)
    return keys, seed_drew(dataset, cfg) if own is not None and own != seed else None


VALIDATED_ON = "validated_on"  # run.json: the validation split a run was validated on ({rows, digest})
# run.json: the seed its data was read with (carving, subsets), where it differs from train.seed: a study's seed
# replicates train on the study's data (read with the study's seed) under their own train.seed, and evaluate re-reads
# the data with this one
DATA_SEED = "data_seed"


def data_seed_record(dataset: Any, train_seed: int) -> dict:
    """{DATA_SEED: seed} where the dataset was read with another seed than the run's train.seed, else {}."""
    seed = getattr(dataset, "prepared_seed", None)
    return {DATA_SEED: seed} if seed is not None and seed != train_seed else {}


def label_count_record(dataset: Any) -> dict:
    """run.json's per-class rows (label_counts: train and val, each label as the split's label_counts() counts it)
    and the labels a val or test split carries that train has none of (unseen_labels: split -> label -> rows): what
    show, report and diagnose (long-tail-collapse's tail/head ratio) read. A classifier's dataset and a generative-label
    one (sft_data.SFTDataset, a completion its label) alike."""
    return {"label_counts": {"train": dict(sorted(dataset.train.label_counts().items())),
                             "val": dict(sorted(dataset.validation.label_counts().items()))},
            "unseen_labels": {("val" if k == "validation" else k): v for k, v in dataset.unseen.items()}}


# a tune study's meta: the training data its trials trained on ({rows, digest}: trained_on); tune --resume refuses
# other training data (search/tune.py)
TRAINED_ON = "trained_on"


def _row_lines(split: Any) -> list[str]:
    """A split's rows, one JSON line each, in order: texts and labels (a row's labels as a set: their order inside a
    multi-label row is no other split); prompts and completions for causal-lm."""
    rows = (((t, sorted(labs)) for t, labs in zip(split.texts, split.labels)) if hasattr(split, "texts") else
            (([(t.role, t.content) for t in e.prompt], e.completion) for e in split.examples))
    return [json.dumps(row, ensure_ascii=False) for row in rows]


def _digest(lines: Iterable[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def validated_on(split: Any) -> dict:
    """What a run was validated on (recorded in run.json at train time): the validation split's row count and a short
    digest of its rows in order (texts and labels; prompts and completions for causal-lm), so a later re-read of the
    run's data (evaluate, tune --resume) can tell whether it is the same split: a carving, or the file, may differ."""
    return {"rows": len(split), "digest": _digest(_row_lines(split))}


def trained_on(dataset: Any) -> dict:
    """What a tune study's trials train on (recorded in its meta as it begins): the train split's row count and a
    digest of the training data as a set of rows (a train file shuffled is the same data). With validation carved
    from train, the digest is of the rows it was carved from (train and validation together): another carving of the
    same file is no other training data (validation_differs says that one)."""
    lines = _row_lines(dataset.train)
    if str(getattr(dataset.validation, "source", "")).endswith(CARVED):
        lines += _row_lines(dataset.validation)
    return {"rows": len(dataset.train), "digest": _digest(sorted(lines))}


def validation_differs(recorded: Any, split: Any) -> str | None:
    """How `split` differs from the validation split a run (or study) recorded (validated_on), e.g. "(8 rows then,
    8 now, other rows or labels)"; None where it is the same, or where none was recorded (a run made before the digest
    existed: no claim either way)."""
    return record_differs(recorded, validated_on(split))


def record_differs(recorded: Any, now: dict) -> str | None:
    """How the data record `now` (validated_on, trained_on) differs from the one recorded, in validation_differs's
    words; None where it is the same or none was recorded."""
    if not isinstance(recorded, dict) or "digest" not in recorded:
        return None
    if now["digest"] == recorded["digest"]:
        return None
    return f"({recorded.get('rows')} rows then, {now['rows']} now, other rows or labels)"


def carved_note(kind: str, carved: int, total: int, asked: float, seed: int, rounding: str) -> str:
    """The note of a validation split carved from train: the share carved, not the one asked (1% of 48 rows in 4
    classes carves one a class, and was noted "1% (4 rows)"), and why they differ (`rounding`) where they do."""
    share = carved / max(1, total)
    why = "" if f"{share:.0%}" == f"{asked:.0%}" else f" (validation_fraction {asked:.0%}: {rounding})"
    return (f"no validation split given: carved a {kind} {share:.0%} ({carved} of {total} rows) from train "
            f"with seed {seed}{why}")


def text_key(text: str, key: Callable[[str], str] | None = None) -> str:
    """The key under which two texts are one: assess's duplicate and leakage key (`key`, by default
    assess.text.normalise: case, spaces and punctuation aside), a text the key makes empty keyed by itself. A carving
    keeps each key's rows on one side."""
    if key is None:
        from loratune.assess.text import normalise as key  # here: the assess package imports this module

    return key(text) or " ".join(text.split())


# the carving's rule, said once: the class a row counts under, the rows a class gives validation, and why a class gave
# none (check_trainable's message and the carving's note say these)
MIN_CARVE_ROWS = 2  # one row goes to validation, one stays in train
CARVE_RULE = (f"each class needs at least {MIN_CARVE_ROWS} rows and 2 distinct texts, case and punctuation aside: a "
              "text goes to validation with all its copies, within validation_fraction of the class's rows, and one "
              "stays in train")
CARVE_CAUSE_ONE_ROW = "one row (it stays in train)"
CARVE_CAUSE_ONE_TEXT = "rows that are all copies of one text (a text's copies go to one side, so they stay in train)"
CARVE_CAUSE_OVER_SHARE = ("no text with few enough copies to fit its share (validation_fraction of its rows; a text "
                          "goes to validation with all its copies)")
CARVE_CAUSE_SHARED = ("texts that are all another class's texts too (exact conflicts, case and punctuation aside: a "
                      "text goes to one side with all its rows, and none of them was carved with the other class's "
                      "share)")
# what brings such a class into validation, besides a validation file (the carving's note says it)
CARVE_CAUSE_FIX = {CARVE_CAUSE_OVER_SHARE: "raise data.validation_fraction",
                   CARVE_CAUSE_SHARED: "give each of those texts one label (`loratune assess` lists the conflicts)"}


def row_class(labels: tuple[str, ...]) -> str:
    """The class a row counts under when validation is carved or a subset drawn: its first label ('' for none)."""
    return labels[0] if labels else ""


def carve_target(rows: int, fraction: float) -> int:
    """How many of a class's `rows` a carving puts in validation: `fraction` of them rounded to whole rows, at least
    one, never all (one stays in train); none of a class of fewer than MIN_CARVE_ROWS rows."""
    return min(rows - 1, max(1, round(fraction * rows))) if rows >= MIN_CARVE_ROWS else 0


def uncarved_causes(keys: list, row_classes: list[str], classes: Iterable[str]) -> dict[str, str]:
    """Why a carving (carve() with `keys` units, `row_classes[i]` row i's class) gives validation no row of each of
    `classes` that the rule says cannot give one, from the rows as they were before the carving: a class of fewer
    than MIN_CARVE_ROWS rows, one whose rows are copies of one text (the unit is all its rows: never carved), one
    each of whose texts is another class's too (carved only with that class's share, and it carved none of them),
    one each of whose texts has two or more rows (its copies, or another class's rows: carved together) and none
    fitted its share. A class with a text of one row is left out: it gives a row at any validation_fraction."""
    unit_rows = Counter(keys)
    unit_classes: dict[Any, set[str]] = {}
    rows: Counter[str] = Counter()
    texts: dict[str, set] = {}
    for key, c in zip(keys, row_classes):
        rows[c] += 1
        texts.setdefault(c, set()).add(key)
        unit_classes.setdefault(key, set()).add(c)
    causes = {c: (CARVE_CAUSE_ONE_ROW if rows[c] < MIN_CARVE_ROWS else CARVE_CAUSE_ONE_TEXT if len(texts[c]) < 2
                  else CARVE_CAUSE_SHARED if all(len(unit_classes[k]) > 1 for k in texts[c])
                  else CARVE_CAUSE_OVER_SHARE if all(unit_rows[k] > 1 for k in texts[c]) else None)
              for c in classes}
    return {c: why for c, why in causes.items() if why is not None}


def said_causes(causes: dict[str, str]) -> str:
    """uncarved_causes as a clause, the classes grouped by cause: "b, c: one row; d: rows that are copies..."."""
    by: dict[str, list[str]] = {}
    for c, why in causes.items():
        by.setdefault(why, []).append(repr(c))
    return "; ".join(f"{', '.join(cs[:5])}{f' and {len(cs) - 5} more' if len(cs) > 5 else ''}: {why}"
                     for why, cs in by.items())


def uncarved_classes(keys: list, row_classes: list[str], carved: list[int]) -> dict[str, str | None]:
    """The classes of the train rows a carving was given (the whole file, before max_*_samples: `keys` and
    `row_classes` as carve() takes them) that its validation rows (`carved`) hold no row of, each with its cause
    (uncarved_causes; None where the rule names none). The carving's note and check_trainable say them."""
    have = {row_classes[i] for i in carved}
    missing = sorted(set(row_classes) - have)
    causes = uncarved_causes(keys, row_classes, missing)
    return {c: causes.get(c) for c in missing}


def stratified_split(split: Split, fraction: float, seed: int,
                     keys: list[str] | None = None) -> tuple[list[int], list[int]]:
    """Indices (keep, carved): carve() with a row's class its first label (row_class), its labels kept in train.
    `keys`: text_key per row, when carving validation (the rows of one text carved or kept together)."""
    return carve([row_class(labs) for labs in split.labels], fraction, seed, keys, split.labels)


def carve(classes: list[str], fraction: float, seed: int, keys: list | None = None,
          labels: tuple[tuple[str, ...], ...] | None = None) -> tuple[list[int], list[int]]:
    """Indices (keep, carved) of rows, `classes[i]` row i's class (one class for all: a random carving, causal-lm's):
    per class, carve_target of its rows, so validation keeps train's class shares. Seeded, order-preserving.
    `keys` (carving validation: text_key per row, classification; the prompt's and completion's, causal-lm): the rows
    of one key are one unit, carved or kept whole: a train file that repeats a row never has a copy of it carved into
    validation (leakage the carving made, that assess then blamed on the data). A unit is carved only where each of
    its rows fits what its own class has left to carve: a text repeated past its class's share (a chat log's 40
    'thanks') stays in train, never filling validation with one text, and every class keeps a train row (a one-row
    class whose text is another class's, in that class's unit, was carved away). `labels`: a label that is no row's
    class (multi-label: 'zeta' only ever beside another label) keeps a train row too where the class can carve another
    unit instead; where it cannot, the unit is carved all the same (a carved validation split never shrinks for it: to
    0 rows, where every row of a class has a label of its own) and its label is noted as not in train. Without keys
    each row is a unit; units are offered per class of their first row, in a seeded order."""
    rng = random.Random(seed)
    units: dict[Any, list[int]] = {}
    for i in range(len(classes)):
        units.setdefault(i if keys is None else keys[i], []).append(i)
    by_label: dict[str, list[list[int]]] = {}
    for rows in units.values():  # the class a unit is offered under: its first row's
        by_label.setdefault(classes[rows[0]], []).append(rows)
    budget = {c: carve_target(n, fraction) for c, n in Counter(classes).items()}  # rows each class has left to carve
    labels = labels if labels is not None else tuple(() for _ in classes)
    in_train = Counter(lab for labs in labels for lab in labs)
    carved: set[int] = set()
    for lab in sorted(by_label):
        group = list(by_label[lab])
        rng.shuffle(group)  # the seeded order the units are offered in (one unit: no draw)
        for every_label in (True, False):  # a label beside another keeps a train row, unless that leaves nothing
            for rows in group:
                if not budget[lab]:  # every unit offered under lab holds a row of lab
                    break
                need = Counter(classes[i] for i in rows)
                held = Counter(x for i in rows for x in labels[i])
                if rows[0] in carved or any(n > budget[c] for c, n in need.items()) or (
                        every_label and any(in_train[x] <= n for x, n in held.items())):
                    continue
                carved.update(rows)
                budget.update({c: budget[c] - n for c, n in need.items()})
                in_train.subtract(held)
    return [i for i in range(len(classes)) if i not in carved], sorted(carved)


def _cover(split: Split, chosen: list[int], pool: list[int]) -> list[int]:
    """`chosen` (a subset of n rows) with, for each label of `pool`'s rows that no chosen row carries, one pool row
    carrying it (the first, in row order: the seeded choices stay the caller's) swapped in for a spare chosen row, one
    all of whose labels another chosen row still carries; no spare: left out (the subset keeps its n rows)."""
    chosen = list(chosen)
    have = Counter(lab for i in chosen for lab in split.labels[i])
    # once a search found no spare, none appears until a swap, unless a pool row raises a label from one chosen row to
    # two (only the row that held it alone can become spare): the search is skipped, not run over every chosen row
    # for each pool row (5,000 classes of 10 rows, a subset of 2,600: 56 s)
    none_spare = False
    for i in pool:
        labs = split.labels[i]
        if all(have[lab] for lab in labs):
            continue
        if none_spare and not any(have[lab] == 1 for lab in labs):
            continue
        have.update(labs)
        spare = next((j for j in reversed(chosen) if all(have[lab] > 1 for lab in split.labels[j])), None)
        if spare is None:
            have.subtract(labs)
            none_spare = True
            continue
        chosen.append(i)
        chosen.remove(spare)
        have.subtract(split.labels[spare])
        none_spare = False
    return sorted(chosen)


def stratified_subset(split: Split, n: int, seed: int, drop_first: Iterable[str] = ()) -> list[int]:
    """Indices of a stratified subset of n rows (every label keeps at least one row where possible; n under the number
    of classes: the classes that lose their only row are the seed's draw, not the last ones by name). `drop_first`:
    classes (row_class) whose rows the subset holds only where the other rows are fewer than n (a validation subset
    beside a max_train_samples subset: the classes train lost, which validation cannot score, so the two subsets
    share what classes they can); a subset of the others as without them."""
    if n >= len(split):
        return list(range(len(split)))
    drop = set(drop_first)
    if drop:
        keep = [i for i in range(len(split)) if row_class(split.labels[i]) not in drop]
        if len(keep) >= n:
            return [keep[j] for j in stratified_subset(split.subset(keep), n, seed)]
        last = [i for i in range(len(split)) if row_class(split.labels[i]) in drop]
        return sorted(keep + [last[j] for j in stratified_subset(split.subset(last), n - len(keep), seed)])
    _, picked = stratified_split(split, n / len(split), seed)
    rng = random.Random(seed + 1)
    if len(picked) > n:
        # rounding overshot: trim from the labels with the most picked rows first (a random row of
        # each), so a small label is not sampled away while bigger ones keep several rows; labels of
        # as many rows are trimmed in a seeded order (by name, the same classes lost their row for every seed)
        groups: dict[str, list[int]] = {}
        for i in picked:
            labs = split.labels[i]
            groups.setdefault(row_class(labs), []).append(i)
        for lab in sorted(groups):
            rng.shuffle(groups[lab])
        order = sorted(groups)
        rng.shuffle(order)
        heap = [(-len(groups[lab]), k, lab) for k, lab in enumerate(order)]
        heapq.heapify(heap)
        for _ in range(len(picked) - n):
            _, k, lab = heapq.heappop(heap)
            groups[lab].pop()
            heapq.heappush(heap, (-len(groups[lab]), k, lab))
        picked = sorted(i for g in groups.values() for i in g)
    elif len(picked) < n:
        taken = set(picked)  # once: a set per row made this quadratic (25,000 of 50,000 rows: 175 s)
        rest = [i for i in range(len(split)) if i not in taken]
        picked = sorted(picked + rng.sample(rest, n - len(picked)))
    # a label carried only beside another row's first label (or trimmed away above) is swapped in for a spare row
    taken = set(picked)
    return _cover(split, picked, [i for i in range(len(split)) if i not in taken])


def refuse_no_shared_label(split: Split, known: tuple[str, ...], shared: bool = True,
                           subsets: tuple[str, str] | None = None) -> None:
    """Refuse a split none of whose labels is one the model learns (`known`, train's): every row scored wrong, a score
    of 0 that says nothing about the model (labels renamed, upper-cased, or another column read). A split with no
    label at all (multi-label rows of `[]` only) is refused too: its F1 scores are 0 and its exact match rewards the
    model that predicts nothing, so the best checkpoint and the thresholds were picked on an empty target. `shared`
    False checks only that: a test split read beside a train file, which a saved run does not score against.
    `subsets`: (cause, fix) where the whole files share a label and only their max_*_samples subsets do not."""
    if len(split) and not any(split.labels):
        raise UserError(f"the {split.name} split has no label on any row ({len(split)} rows in '{split.file}', each "
                        "an empty label list): there is nothing to score a model against",
                        f"label the {split.name} rows (data.none_label names the class of a row with no label), "
                        + ("or remove the file to carve validation from train" if split.name == "validation" else
                           "or remove the file (data.test_file) to train without a test split"))
    c = Counter(lab for labs in split.labels for lab in labs if lab not in known)
    if shared and c and not any(lab in known for labs in split.labels for lab in labs):
        raise UserError(f"the {split.name} split shares no label with train ({split.name}: "
                        f"{', '.join(list(c)[:5])}{'...' if len(c) > 5 else ''}; train: "
                        f"{', '.join(known[:5])}{'...' if len(known) > 5 else ''})"
                        + (f": {subsets[0]}" if subsets else ""),
                        subsets[1] if subsets else "give both splits the same label names (0 and 0.0 are one label; "
                        "'pin' and 'PIN' are two)")


def subset_lost(whole: Split, sub: Split) -> list[str]:
    """The labels of a split (`whole`) that its max_*_samples subset (`sub`) keeps no row of, by name."""
    kept = {lab for labs in sub.labels for lab in labs}
    return sorted({lab for labs in whole.labels for lab in labs} - kept)


# what a label the model never trained on costs a split that carries it, per task (the unseen-label note and the
# max_train_samples subset's note say it)
UNSEEN_COST = {False: "they are scored as errors",
               True: "a row carrying one is wrong in exact match (the label itself has no column in the F1 scores)"}


def subset_fix(caps: list[tuple[str, int]]) -> str:
    """What to raise where max_*_samples subsets left labels out: `caps`, (config key, the labels of its split)."""
    return (" and ".join(f"data.{key} (at least the number of labels, {labels})" for key, labels in caps)
            + (", or leave it unset" if len(caps) == 1 else ", or leave them unset"))


def subset_note(name: str, key: str, whole: Split, sub: Split, multi_label: bool) -> str:
    """The note for a split's max_*_samples subset (`key`): its rows, and the labels of the split it keeps no row of
    (a cap under the number of labels: which ones is the seed's draw), with what that costs and the fix."""
    lost = subset_lost(whole, sub)
    every = len({lab for labs in whole.labels for lab in labs})
    cost = (f"the model never learns them; in validation/test, {UNSEEN_COST[multi_label]}" if name == "train" else
            "their recall is not measured")
    return f"{name}: stratified subset of {len(sub)} rows ({key})" + (
        f", with no row of {len(lost)} of the split's {every} label(s) ({', '.join(lost[:5])}"
        f"{'...' if len(lost) > 5 else ''}): {cost}; to keep them, raise {subset_fix([(key, every)])}" if lost else "")


def unseen_label_note(where: str, counts: Counter, multi_label: bool, dropped: Iterable[str] = ()) -> str:
    """The note for labels that name no class of the training data (`counts`: label -> occurrences in `where`, a split
    or the probe file): the model can never predict them, so each one is scored as an error. `dropped`: the labels of
    the train file that its max_train_samples subset keeps no row of (subset_lost), said as the cause of those."""
    by_subset = [lab for lab in counts if lab in set(dropped)]
    cause = ("" if not by_subset else "; all of them in the train file, left out by its max_train_samples subset"
             if len(by_subset) == len(counts) else
             f"; {len(by_subset)} of them in the train file, left out by its max_train_samples subset")
    return (f"{where}: {sum(counts.values())} label occurrence(s) of {len(counts)} label(s) not in train "
            f"({', '.join(list(counts)[:5])}{'...' if len(counts) > 5 else ''}{cause}); " +
            UNSEEN_COST[multi_label])


def _subsets_share_none(whole: Split, train: Split, full: Split, validation: Split) -> tuple[str, str] | None:
    """(cause, fix) for refuse_no_shared_label where the train and validation files share a label and only their
    max_*_samples subsets (`train` of `whole`, `validation` of `full`) do not; None otherwise."""
    shared = {lab for labs in whole.labels for lab in labs} & {lab for labs in full.labels for lab in labs}
    caps = [(key, len({lab for labs in w.labels for lab in labs})) for key, w, sub in
            (("max_train_samples", whole, train), ("max_eval_samples", full, validation)) if sub is not w]
    if not shared or not caps:
        return None
    return (f"the splits share {len(shared)} label(s), but not their "
            f"{' and '.join(f'data.{key}' for key, _ in caps)} subset{'s' if len(caps) > 1 else ''}",
            "raise " + subset_fix(caps))


def load_dataset(cfg: DataConfig, seed: int = 42) -> Dataset:
    """Read the splits the config names, carve a validation split if needed, fix the label space."""
    notes: list[str] = []
    splits: dict[str, Split] = {}
    uncarved: dict[str, str | None] = {}
    name = cfg.dataset_name
    if name == EMBEDDED_DATA:
        # the embedded demo is the default dataset_name: a user's own train_file replaces it whole
        # (never mix the user's train with the demo's validation/test)
        folder = None if cfg.train_file else embedded_data_dir()
    elif name == EMBEDDED_SFT_DATA and not cfg.train_file:
        raise UserError(f"dataset_name '{name}' is instruction data (prompt/completion pairs), with no labels to learn",
                        f"train a causal LM on it with model.task=causal-lm, or use labelled data: "
                        f"data.dataset_name={EMBEDDED_DATA}")
    elif name and Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
    else:
        folder = None
    if folder is not None:
        for split in SPLIT_NAMES:
            if getattr(cfg, f"{split}_file"):  # named by its own key: the folder's file for it is not read
                continue
            p = find_split_file(folder, split)
            if p is not None:
                splits[split] = parse_file(p, cfg, split)
        if "train" not in splits and cfg.train_file is None:
            raise UserError(f"folder '{folder}' has no train file",
                            "add train.jsonl/.csv/.parquet there, or set data.train_file")
    elif name and not cfg.train_file:
        if data_suffix(Path(name)) in SUFFIXES or "/" not in name and Path(name).exists():
            raise UserError(f"dataset_name '{name}' is a file, not a folder", f"use data.train_file={name}")
        if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, never a hub id: no hub call
            raise UserError(f"dataset_name '{name}' does not exist",
                            "check the path: a folder with train/validation/test files")
        hub, hub_notes = _load_hub(cfg)
        splits.update(hub)
        notes += hub_notes
    for split, key in (("train", cfg.train_file), ("validation", cfg.validation_file), ("test", cfg.test_file)):
        if key:
            p = Path(key).expanduser()
            splits[split] = parse_file(p, cfg, split)
    if "train" not in splits:
        raise UserError("no training data found", "set data.train_file or data.dataset_name")

    train = splits["train"]
    multi = cfg.multi_label
    if multi is None:
        multi = any(len(labs) != 1 for labs in train.labels) or cfg.label_delimiter is not None
    if not multi:  # every split, not just train: a 2-label validation row cannot be scored single-label
        for sp in splits.values():
            for i, labs in enumerate(sp.labels):
                if len(labs) != 1:
                    raise UserError(f"data file '{sp.source}' {sp.where(i)} has {len(labs)} labels but the data is "
                                    "single-label", "set data.multi_label=true, or give one label per row")

    merged = merged_spellings_note(list(splits.values()))  # every split's spellings, before carving subsets them
    if merged:
        notes.append(merged)
    for sname, sp in splits.items():
        if sp.list_cells:
            example = f'"{list(max(sp.labels, key=len))!r}"'  # a row of the most labels: a list, as written
            notes.append(f"{sname}: " + LIST_CELLS_NOTE.format(example=example)
                         + f" ({sp.list_cells} of {len(sp)} rows of '{sp.file}')")
    validation = splits.get("validation")
    if validation is None:
        keys = [text_key(t) for t in train.texts]
        keep, carved = stratified_split(train, cfg.validation_fraction, seed, keys)
        validation = train.subset(carved, name="validation", source=f"{train.source}{CARVED}")
        notes.append(carved_note("stratified", len(validation), len(train), cfg.validation_fraction, seed,
                                 "each class rounds to whole rows, at least one" + (
                                     ", a text's copies carved together" if len(set(keys)) < len(keys) else "")))
        uncarved = uncarved_classes(keys, [row_class(labs) for labs in train.labels], carved)
        # a class of one row, never carved, goes unsaid
        left_out = {c: why for c, why in uncarved.items() if why not in (None, CARVE_CAUSE_ONE_ROW)}
        if left_out and validation:  # none carved at all: check_trainable refuses it, naming the same causes
            notes.append(f"validation has no row of {said_causes(left_out)}; to score "
                         f"{'it' if len(left_out) == 1 else 'them'}, give a validation file (data.validation_file)"
                         + "".join(f", or {fix}" for why, fix in CARVE_CAUSE_FIX.items() if why in left_out.values()))
        train = train.subset(keep)
    # (a subset's single class is the subset's, not the file's; the file's rows: the training rows and any carved)
    whole, carved_n = train, (0 if "validation" in splits else len(validation))
    if cfg.max_train_samples and cfg.max_train_samples < len(train):
        train = train.subset(stratified_subset(train, cfg.max_train_samples, seed))
        notes.append(subset_note("train", "max_train_samples", whole, train, bool(multi)))
    full = validation
    if cfg.max_eval_samples and cfg.max_eval_samples < len(validation):
        # the classes the train subset lost go first: validation cannot score them, and a subset of the others keeps
        # the two subsets' classes shared (drawn apart, 10 train and 5 validation rows of 40 classes shared none for
        # 8 seeds of 20)
        validation = validation.subset(stratified_subset(validation, cfg.max_eval_samples, seed,
                                                         drop_first=subset_lost(whole, train)))
        notes.append(subset_note("validation", "max_eval_samples", full, validation, bool(multi)))

    counts = train.label_counts()
    # a row's target, its label set: multi-label rows that all carry the same labels ('a' and 'b' on every row) give
    # each label no negative row, nothing to learn, and scored 1.0 on a validation split alike (single-label: one set
    # per class, the single class below)
    targets = {frozenset(labs) for labs in train.labels}
    if len(counts) < 2 or len(targets) < 2:
        only = (f"a single class ('{next(iter(counts), '(none)')}')" if len(counts) < 2 else
                f"a single label set ({sorted(next(iter(targets)))} on every row: each label is on every row)")
        if train is not whole and len(whole.label_counts()) >= 2 and len({frozenset(x) for x in whole.labels}) >= 2:
            raise UserError(f"the training subset of {len(train)} row(s) that data.max_train_samples="
                            f"{cfg.max_train_samples} keeps of the {len(whole)} training rows of '{train.source}' "
                            f"({len(whole.label_counts())} labels"
                            + (f"; its other {carved_n} rows carved for validation" if carved_n else "")
                            + f") has {only}",
                            "a classifier needs at least two labels, and rows that differ in them: raise "
                            + subset_fix([("max_train_samples", len(whole.label_counts()))]))
        raise UserError(f"training data '{train.source}' has {only}",
                        "a classifier needs at least two labels, and rows that differ in them: check "
                        "data.label_column")
    space = LabelSpace(tuple(sorted(counts)), bool(multi))
    if cfg.none_label and cfg.none_label not in space.index:  # said, not silently ignored
        notes.append(f"data.none_label '{cfg.none_label}' has no effect: no training row " +
                     ("lacks a label or carries it" if multi else "carries it (it applies to multi-label data)"))
    unseen: dict[str, dict[str, int]] = {}
    known = set(space.labels)
    for sname, sp in (("validation", validation), ("test", splits.get("test"))):
        if sp is None:
            continue
        c = Counter(lab for labs in sp.labels for lab in labs if lab not in known)
        # an empty test split too (its scores, recorded at the end, would lie); a test split that shares no label
        # with this train file is only noted: a saved run scores it against its own label map (evaluate)
        refuse_no_shared_label(sp, space.labels, shared=sname == "validation",
                               subsets=_subsets_share_none(whole, train, full, validation))
        if c:
            unseen[sname] = dict(c.most_common())
            notes.append(unseen_label_note(sname, c, space.multi_label, subset_lost(whole, train)))
    return Dataset(train, validation, splits.get("test"), space, tuple(notes), unseen, prepared_seed=seed,
                   uncarved=uncarved)
