"""`loratune predict RUN TEXT...` or `--file FILE`: labels for new texts from a trained run."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from loratune.listing import LABEL_JOIN as LIST_JOIN, NO_LABEL  # (the label rule's: one place)
from loratune.commands._common import console, label_shown, one_line, piped, print_json_items, safe
from loratune.errors import UserError, require_file


def register(sub) -> None:
    p = sub.add_parser("predict", help="predict labels for texts with a trained run")
    p.add_argument("run", help="run directory (output_dir of `loratune train`)")
    p.add_argument("texts", nargs="*", help="texts to classify")
    p.add_argument("--file", "-f", help="a .txt file of texts, one per line (or .jsonl/.json/.csv/.parquet with a text "
                                        "column); '-' or a pipe (`<(cmd)`, /dev/stdin) is read one text per line. "
                                        "With no texts and no --file, texts piped to stdin are read")
    p.add_argument("--top-k", type=int, default=1,
                   help="show the k most likely labels (multi-label: the scores of k labels, the predicted ones first)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


PLAIN_SUFFIXES = ("", ".txt")  # files read one text per line; any other form not read as data is refused
STDIN = "-"  # --file's name for standard input (as cat, jq and pandas name it), read one text per line
STDIN_SAID = "standard input"


def read_texts(path: str, column: str = "text") -> list[str]:
    """The texts of a file: one per line (.txt, or no suffix), or the `column` of a .jsonl/.json/.csv/.parquet file
    (the run's own data.text_column, so a run reads files shaped like its training data). Any other suffix (.tsv,
    .xlsx) is refused: read as lines, its header and label column were predicted as texts. A text with no visible
    character is refused by its file and line, as training refuses it."""
    from loratune.data import CONVERT_HINT, SUFFIXES, data_suffix

    if path == STDIN:
        return _lines(_read_stdin(), Path(STDIN), STDIN_SAID)
    p = Path(path)
    suffix = data_suffix(p)
    if suffix not in SUFFIXES + PLAIN_SUFFIXES:
        raise UserError(f"file '{p}' has suffix '{suffix}', a form predict does not read (it reads "
                        f"{', '.join(SUFFIXES)} with a '{column}' column, or .txt with one text per line)",
                        f"convert it ({CONVERT_HINT}), or save its texts one per line as .txt")
    if suffix in SUFFIXES:
        from loratune.data import check_characters, has_visible, read_rows_at, where_rows

        # rows named by their file line, as training names them; a named pipe (mkfifo x.jsonl) read as the file it
        # streams, as a text file's is below
        rows, lines = read_rows_at(p, pipe=True)
        bad = next((i for i, r in enumerate(rows) if not isinstance(r.get(column), str)), None)
        if bad is not None:  # every row, not the first only: a row without a text has nothing to predict
            what = f"no '{column}' column" if column not in rows[bad] else f"a '{column}' of {rows[bad][column]!r}"
            raise UserError(f"'{p}' {where_rows(lines, [bad])} has {what}",
                            f"give every row a '{column}' string (the run's data.text_column), or a plain text file")
        for i, r in enumerate(rows):
            check_characters(r[column], f"'{p}' {where_rows(lines, [i])}")
        empty = [i for i, r in enumerate(rows) if not has_visible(r[column])]
        if empty:
            raise UserError(f"'{p}' {where_rows(lines, empty[:8])}{', ...' if len(empty) > 8 else ''}: "
                            f"{len(empty)} empty text(s) in column '{column}'", "give texts with words in them, or "
                            "drop those rows")
        return [r[column] for r in rows]
    # a named pipe is read as the text file it streams (`--file <(cmd)`, /dev/stdin on a pipe: both no suffix)
    require_file(p, "file", "give a text file with one text per line", pipe=True)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UserError(f"file '{p}' cannot be read ({exc.strerror or exc})", "give a readable text file") from None
    return _lines(raw, p, "file")


def _read_stdin() -> bytes:
    """Standard input's bytes, to its end."""
    stdin = sys.stdin
    try:
        if stdin is None:
            raise OSError("it is closed")
        buffer = getattr(stdin, "buffer", None)  # bytes, decoded as a file's are; a text stream (embedded) as given
        return buffer.read() if buffer is not None else stdin.read().encode("utf-8", "surrogatepass")
    except OSError as exc:
        raise UserError(f"{STDIN_SAID} cannot be read ({exc.strerror or exc})",
                        "give the texts as arguments or --file FILE") from None


def _lines(raw: bytes, p: Path, what: str) -> list[str]:
    """The texts of a plain text's bytes, one per line; `what` names their source `p` in errors ('file', or
    STDIN_SAID for '-', said alone)."""
    from loratune.data import decode_utf8, has_visible

    said = f"{what} '{p}'" if what != STDIN_SAID else what
    # UTF-8 (a BOM dropped, other encodings refused as the data files are); lines end at \n alone: splitlines() also
    # cut a text at U+2028 / U+2029 / U+0085
    numbered = [(n, line.rstrip("\r")) for n, line in enumerate(decode_utf8(raw, p, what).split("\n"), start=1)
                if line.strip()]  # blank lines separate, as in the data files
    if not numbered:
        raise UserError(f"{said} has no texts (only empty lines)", "give one text per line")
    hidden = [n for n, line in numbered if not has_visible(line)]
    if hidden:  # a line of zero-width or control characters only: nothing to classify, and no blank line either
        raise UserError(f"{said} line{'s' if len(hidden) > 1 else ''} {', '.join(map(str, hidden[:8]))}"
                        f"{', ...' if len(hidden) > 8 else ''}: no visible character (only control or zero-width "
                        "characters)", "give texts with words in them, or drop those lines")
    return [line for _, line in numbered]


def run(args) -> int:
    from loratune import api

    # (each text is checked by api.predict_chunks: the arguments first, numbered as given, then the file's lines)
    texts = list(args.texts) + (read_texts(args.file, _text_column(args.run)) if args.file else [])
    if not texts and not args.file and _stdin_piped():
        # nothing given, and something piped in (`cat texts.txt | loratune predict RUN`): its lines are the texts; an
        # empty stdin (cron's /dev/null) is no texts given
        _text_column(args.run)  # the run checked before its input is read, as with --file
        raw = _read_stdin()
        if raw.strip():
            texts = _lines(raw, Path(STDIN), STDIN_SAID)
    if not texts:
        raise UserError("no texts given", "pass texts as arguments, --file FILE, or one per line on standard input "
                                          "(`cat texts.txt | loratune predict RUN`)")
    chunks = api.predict_chunks(args.run, texts, top_k=args.top_k)
    # each chunk's results written as it is scored (a long file's first lines come at once, memory stays a chunk's);
    # progress on stderr only, beside stdout's results, when the input takes more than one chunk
    with _progress(len(texts)) as advance:
        if args.json:
            print_json_items(advance(chunks))
            return 0
        # one line per text, in order: `label score  text  (alternatives)`. Its line breaks escaped (one_line), and no
        # wrapping where stdout is a file or a pipe (rich wrapped at 80 columns there: 10k texts gave 21k lines)
        out = console()
        whole = piped()
        for chunk in advance(chunks):
            for p in chunk:
                text = safe(one_line(p["text"]))
                if "label" in p:
                    alts = LIST_JOIN.join(f"{label_shown(t['label'])} {t['score']:.2f}" for t in p["top"][1:])
                    out.print(f"[bold]{label_shown(p['label'])}[/] {p['score']:.2f}  {text}"
                              + (f"  [dim]({alts})[/]" if alts else ""), soft_wrap=whole)
                else:  # multi-label: --top-k lists that many labels' scores (the predicted ones first)
                    shown = list(p["scores"].items())[:max(args.top_k, len(p["labels"]))] if args.top_k > 1 else []
                    alts = LIST_JOIN.join(f"{label_shown(lab)} {v:.2f}" for lab, v in shown)
                    out.print(f"[bold]{LIST_JOIN.join(map(label_shown, p['labels'])) or NO_LABEL}[/]  {text}"
                              + (f"  [dim]({alts})[/]" if alts else ""), soft_wrap=whole)
    return 0


def _stdin_piped() -> bool:
    """Whether standard input is open and no terminal (a pipe, a file): read for texts when none are given. A terminal
    is not waited on: `loratune predict RUN` alone says no texts were given."""
    try:
        return sys.stdin is not None and not sys.stdin.isatty()
    except (OSError, ValueError):  # a closed stream
        return False


@contextlib.contextmanager
def _progress(total: int):
    """A function that passes the chunks through, counting their texts on stderr (train.RunProgress: a bar on a
    terminal, plain lines off one) for an input of more than one chunk (inference.PREDICT_CHUNK_ROWS), none for a
    few texts."""
    from loratune.inference import PREDICT_CHUNK_ROWS
    from loratune.train import RunProgress

    if total <= PREDICT_CHUNK_ROWS:
        yield lambda chunks: chunks
        return
    # results on a screen print above the bar; stdout sent elsewhere keeps every result (rich would send it to stderr)
    bar = RunProgress(total, True, title="predict", metric=None, redirect_stdout=sys.stdout.isatty(),
                      redirect_stderr=False)

    def advance(chunks):
        for chunk in chunks:
            yield chunk
            bar.advance(len(chunk))

    try:
        yield advance
    finally:
        bar.close()


def _text_column(run_dir: str) -> str:
    """The run's data.text_column (config.yaml), or 'text' when the run's config cannot say."""
    from loratune.config import load_config
    from loratune.store import CONFIG, RunStore

    RunStore(run_dir).require()  # a run predict cannot read is said as predict says it, not read past as 'text'
    try:
        return load_config(Path(run_dir) / CONFIG, recorded=True).data.text_column
    except UserError:
        return "text"
