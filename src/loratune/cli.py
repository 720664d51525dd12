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


def main(argv: list[str] | None = None) -> int:
    import warnings

    # the libraries' deprecation notices (transformers' is_gradient_checkpointing on every peft load) are
    # for their API's callers, not for someone running `loratune predict`
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|torch)(\.|$)")
    parser = build_parser()
    args = parse(parser, sys.argv[1:] if argv is None else argv)
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
    except BrokenPipeError:  # `loratune report --json | head`: the reader left; end quietly (Python's own recipe)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when stdout is flushed
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
