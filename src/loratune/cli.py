"""The `loratune` command: a thin shell over the Python API.

Each sub-command lives in `loratune.commands.<name>` and exposes `register(subparsers)`, which adds
its parser and sets `func(args) -> int`. Command modules import heavy libraries (torch,
transformers) inside their functions, so `loratune diagnose` and `loratune rules` start fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from pathlib import Path

from loratune.errors import NAME_MAX, PATH_MAX, UserError
from loratune.listing import encodable

# Order is the order shown in `loratune --help`.
COMMAND_MODULES = (
    "train",
    "params",
    "plan",
    "predict",
    "evaluate",
    "assess",
    "diagnose",
    "rules",
    "tune",
    "report",
    "show",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loratune",
        description="Fine-tune transformers for text classification with LoRA, and tune it by diagnosis.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"loratune.commands.{name}")
        except ModuleNotFoundError as exc:  # a command still being built must not break the others
            if exc.name == f"loratune.commands.{name}":
                continue
            raise
        module.register(sub)
    parser.set_defaults(_commands=sub.choices)
    return parser


# options whose value may start with '-' (argparse would read `--budget -5m` as an unknown option)
VALUE_OPTIONS = ("--budget",)


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options may come before, between or after positionals (`predict RUN --json "text"`,
    `train r=8 --dry-run lr=1e-3`): what the first pass leaves over is parsed again with the command's
    parser in intermixed mode."""
    argv: list = list(argv)
    for i in range(len(argv) - 1):
        if argv[i] in VALUE_OPTIONS and argv[i + 1] is not None and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"{argv[i]}={argv[i + 1]}", None]
    argv = [a for a in argv if a is not None]  # (an empty argument the user gave stays: `predict RUN ""`)
    args, extra = parser.parse_known_args(argv)
    if not extra:
        return args
    commands = getattr(args, "_commands", {}) or {}
    if args.command not in commands:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    rest = argv[argv.index(args.command) + 1:]
    again = commands[args.command].parse_intermixed_args(rest)
    again.command = args.command
    return again


class _ReaderMayLeave:
    """sys.stdout / sys.stderr for one command: what is written is what the stream's encoding can write
    (listing.encodable: a glyph as its ASCII fallback, other text escaped; stdout redirected as cp1252 on Windows or
    ASCII under LC_ALL=C ended a command with a UnicodeEncodeError). Once the reader of the stream is gone
    (`loratune train ... | head -1`) what is written to it is dropped and the command runs on to its end, so it exits with its own code (a completed
    run exited 1, which says the run failed, when the pipe closed before its summary was printed)."""

    def __init__(self, stream):
        self._stream = stream
        self.gone = False

    def write(self, text):
        if not self.gone:
            try:
                return self._stream.write(encodable(text, getattr(self._stream, "encoding", None)))
            except BrokenPipeError:
                self._reader_left()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_left()

    def _reader_left(self) -> None:
        import os

        self.gone = True
        try:  # what is still buffered goes nowhere, and Python's flush at exit raises no second error
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        except (OSError, ValueError):  # a stream with no file descriptor (a test's capture)
            pass

    def __getattr__(self, name):  # isatty, encoding, fileno ... as the stream answers them
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    from loratune import library_warnings

    library_warnings.silence()  # the libraries' deprecation notices are for their API's callers
    parser = build_parser()
    args = parse(parser, sys.argv[1:] if argv is None else argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from loratune import signals

    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr)
    try:
        with signals.sigterm_as_interrupt():  # SIGTERM ends a command like Ctrl-C (exit 143, not 130)
            return int(args.func(args) or 0)
    except UserError as exc:
        from loratune.assess.text import printable  # (a path "nope\x1b[2J" in the message cleared the screen)

        print(f"loratune {args.command}: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"loratune {args.command}: {signals.describe(exc)}", file=sys.stderr)
        return signals.exit_code(exc)
    except BrokenPipeError:  # output that went round sys.stdout to a reader that left: end quietly (Python's recipe)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), streams[0].fileno())  # no second error when stdout is flushed
        return 1
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            raise
        # a path named by the user with a name over NAME_MAX bytes that no reader checked first (errors.require_file,
        # the config's path keys and the output folders do), or a whole path over PATH_MAX of short names: still the
        # user's input, never a traceback
        import os

        from loratune.assess.text import printable

        named = str(exc.filename)
        longest = max((len(os.fsencode(part)) for part in Path(named).parts), default=0)
        what = (f"has a name too long for the file system (at most {NAME_MAX} bytes a file or folder name)"
                if longest > NAME_MAX else f"is too long for the file system ({len(os.fsencode(named))} bytes; "
                                           f"at most {PATH_MAX} a whole path)")
        print(f"loratune {args.command}: error: '{printable(named)}' {what}\n  fix: give a shorter name",
              file=sys.stderr)
        return 2
    finally:
        sys.stdout, sys.stderr = streams


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
