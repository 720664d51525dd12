"""The `loratune` command: a thin shell over the Python API.

Each sub-command lives in `loratune.commands.<name>` and exposes `register(subparsers)`, which adds
its parser and sets `func(args) -> int`. Command modules import heavy libraries (torch,
transformers) inside their functions, so `loratune diagnose` and `loratune rules` start fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from loratune.errors import UserError

# Order is the order shown in `loratune --help`.
COMMAND_MODULES = (
    "train",
    "params",
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from loratune import signals

    try:
        with signals.sigterm_as_interrupt():  # SIGTERM ends a command like Ctrl-C (exit 143, not 130)
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"loratune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"loratune {args.command}: {signals.describe(exc)}", file=sys.stderr)
        return signals.exit_code(exc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
