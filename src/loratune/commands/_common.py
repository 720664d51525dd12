"""Helpers shared by sub-commands: config arguments, console, number formatting."""

from __future__ import annotations

import argparse
import json
import sys

from loratune.listing import LINE_BREAKS, console, one_line  # noqa: F401  (the one-line rule, beside printable; the
#                                                              console every command prints through)


class Once(argparse.Action):
    """An option given at most once: a second --config (--thresholds, --data) silently replaced the first (its keys
    all dropped). `twice=` says what to do instead, in the option's own words."""

    def __init__(self, *args, twice: str = "give it once", **kwargs):
        super().__init__(*args, **kwargs)
        self.twice = twice

    def __call__(self, parser, namespace, values, option_string=None):
        before = getattr(namespace, self.dest, None)
        if before is not None:
            parser.error(f"{option_string} given twice ('{before}' and '{values}'): {self.twice}")
        setattr(namespace, self.dest, values)


def add_thresholds_arg(p: argparse.ArgumentParser, help: str) -> None:  # noqa: A002 (argparse's name)
    p.add_argument("--thresholds", metavar="FILE.yaml", action=Once, help=help,
                   twice="give one file (put every name into it: `name: value` lines)")


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", action=Once,
                   twice="give one file (copy the other's keys into it, or give them as key=value overrides)",
                   help="YAML config (sections model/data/adapter/train, or flat keys)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="overrides, e.g. r=16 learning_rate=5e-4 target_modules=[attn,ffn@top:2]")
    p.add_argument("--data", metavar="DIR", action=Once, twice="give one data folder or hub dataset id",
                   help="the data: a folder of train/validation/test files or a hub "
                   "dataset id (shorthand of data.dataset_name=DIR; a key=value override still wins)")


def load_cfg(args):
    from loratune.config import load_config

    overrides = list(args.overrides or ())
    if getattr(args, "data", None):
        overrides.insert(0, f"data.dataset_name={args.data}")
    return load_config(args.config, overrides)


def safe(text) -> str:
    """A label, text or message from the user's data as rich markup that prints it literally: non-printable
    characters escaped (assess.text.printable: an ESC sequence cleared the screen, retitled the window) and markup
    escaped (a label "[/]" raised MarkupError, "[bold red]x[/]" printed restyled). A trailing run of backslashes is
    doubled and closed by an empty tag: rich halves backslashes only before a tag, so "C:\\" printed "C:\\\\" at the
    end of a cell and ate the next tag's bracket before it; with a tag of its own it prints as written anywhere."""
    from rich.markup import escape

    from loratune.assess.text import printable

    s = printable(str(text))
    body = s.rstrip("\\")
    tail = len(s) - len(body)
    return escape(body) + ("\\" * (2 * tail) + "[none][/none]" if tail else "")


def piped() -> bool:
    """Whether stdout is a file or a pipe: a line of a listing (predict's answers, evaluate's pairs) is printed with
    soft_wrap=piped(), whole on its line there (rich wrapped at 80 columns: 10k texts gave 21k lines), folded to the
    terminal's width on one. sys.stdout.isatty: rich's is_terminal says True under FORCE_COLOR / TTY_COMPATIBLE."""
    return not sys.stdout.isatty()


RULE_ENDS = 6  # cells a rich rule keeps beside its title: a space and at least two rule characters each side


def heading(con, title: str, details: str = "") -> None:
    """A run's or a study's heading (rich markup): a rule with the title and its details where they fit the width;
    else the rule with the title and the details on a line of their own; a title too long for a rule (a long run
    name) on its own line under a bare rule, whole (rich's rule cut it at the width: runs ...seed42 and ...seed43
    had the same heading)."""
    def fits(markup: str) -> bool:
        return con.render_str(markup, highlight=False).cell_len + RULE_ENDS <= con.width  # as printed

    if details and fits(f"{title}  {details}"):
        con.rule(f"{title}  {details}")
        return
    if fits(title):
        con.rule(title)
    else:
        con.rule()
        con.print(title, soft_wrap=True)  # one line, whole: the terminal folds it, a file keeps it
    if details:
        con.print(details)


FOLD_MIN = 4  # cells a folding column (a name, a phase) keeps at least when an id column is weighed whole


def fill_table(con, table, columns, rows) -> None:
    """The columns and rows of a table of trials (tune's, show STUDY's): columns are (header, kind, justify), kind
    "number" (#, a score, examples, wall: never folded, as wide as its longest value; its header wraps at its words),
    "id" (a status, a verdict: whole where the width allows, else folded) or "text" (a name, a phase: folds);
    rows are rich markup cells. What stays whole at a narrow width, in order: the numbers, the ids, the text. At 80
    columns rich cut lr-too-large and lr-too-small alike to 'lr-too…'; the verdict kept whole at any cost folded a
    score `0.35` `5` over two lines."""
    from rich.cells import cell_len
    from rich.text import Text

    rows = [list(r) for r in rows]

    def longest(i: int) -> int:
        return max((Text.from_markup(r[i]).cell_len for r in rows), default=0)

    def words(header: str) -> int:
        return max(map(cell_len, header.split()), default=0)

    for header, _, justify in columns:  # (added now for the table's padding below; widths set after)
        table.add_column(Text(header, overflow="fold"), justify=justify, overflow="fold")
    # rich's table: padding per column and its lines (no public measure of a table's fixed part)
    room = con.width - table._extra_width - sum(table._get_padding_width(i) for i in range(len(columns)))
    folding = sum(min(longest(i), FOLD_MIN) for i, (_, kind, _) in enumerate(columns) if kind == "text")
    ids = [i for i, (_, kind, _) in enumerate(columns) if kind == "id"][::-1]  # the verdict first, then the status
    for roomy in (True, False):  # the numbers' headers whole at their words where the ids fit so, else the values
        width = {i: max(longest(i), words(h) if roomy else 0, 1) for i, (h, kind, _) in enumerate(columns)
                 if kind == "number"}
        used, whole, more = sum(width.values()) + folding, {}, 0
        for i in ids:  # whole where it fits, else it folds with the text
            w = max(longest(i), words(columns[i][0]))
            if used + w <= room:
                whole[i], used = w, used + w
            else:
                more, used = more + 1, used + min(w, FOLD_MIN)
        if not more:
            break
    for i, w in width.items():
        table.columns[i].width = w
    for i, w in whole.items():
        table.columns[i].no_wrap, table.columns[i].min_width = True, w
    for r in rows:
        table.add_row(*r)


def label_shown(label) -> str:
    """A label as a line or a table cell shows it (rich markup, safe): listing.label_text's one rule, quoted where
    a comma, quote or line break would misstate the labels (a label "bal\\nance" broke show's table into two rows)."""
    from loratune.listing import label_text

    return safe(label_text(label))


def json_out(stream=None) -> dict:
    """How every JSON a command prints is written (print_json, print_json_items): UTF-8 as it is on a UTF-8 stream
    (a label café reads café); non-ASCII as \\u escapes on any other (cp1252, ASCII under LC_ALL=C), which parse to
    the same JSON (encodable's backslash escape of a label made it a different string)."""
    import codecs

    encoding = getattr(stream if stream is not None else sys.stdout, "encoding", None)
    try:
        utf8 = codecs.lookup(encoding).name == "utf-8" if encoding else False
    except LookupError:
        utf8 = False
    return {"indent": 2, "ensure_ascii": not utf8}


def print_json(data, default=None) -> None:
    """The one way a command prints JSON on stdout (json_out)."""
    from loratune.store import json_safe

    json.dump(json_safe(data), sys.stdout, default=default, **json_out())
    sys.stdout.write("\n")


def print_json_items(chunks) -> None:
    """A JSON list, as print_json writes it, from chunks (lists) of its items written as each chunk comes: a long
    output starts at once and is never held whole."""
    from loratune.store import json_safe

    sep, how = "[\n", json_out()
    for chunk in chunks:
        for item in chunk:
            sys.stdout.write(sep + "  " + json.dumps(json_safe(item), **how).replace("\n", "\n  "))
            sep = ",\n"
    sys.stdout.write("[]\n" if sep == "[\n" else "\n]\n")


def human(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:,.0f}"
