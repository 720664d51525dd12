"""User-facing errors: each names the problem and the fix. The CLI prints them and exits 2."""

from __future__ import annotations

import errno

# a write refused for lack of room (a full disk or a quota): by its errno, or by the text of a library that gives none
# (safetensors' Rust writer: "Os { code: 28, kind: StorageFull, message: \"No space left on device\" }")
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_TEXTS = ("No space left", "Disk quota exceeded", "StorageFull", "code: 28")


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` is a write refused for lack of room: the one test of a full disk or quota (train.output_error,
    the prefix cache's write failures, a study's storage)."""
    text = str(exc)
    return getattr(exc, "errno", None) in NO_SPACE_ERRNOS or any(t in text for t in NO_SPACE_TEXTS)


def finite_number(value) -> bool:
    """Whether a value a user gave is a real finite number (an int, a float, a numpy number; not a bool, not a str):
    the one test of the options and files that take one (label_map.json's thresholds, tune's options, the callback's)."""
    import math
    import numbers

    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


# What Python's json and PyYAML raise on a file they cannot read, beside their own errors: a file nested thousands deep
# (RecursionError) and an integer over Python's int-string limit (ValueError 'Exceeds the limit (4300 digits)').
# json.JSONDecodeError and UnicodeDecodeError are ValueErrors. Every reader of a JSON or YAML file or value catches
# these (beside yaml.YAMLError for YAML), so such a file is "not valid JSON/YAML", never a traceback.
PARSE_ERRORS = (ValueError, RecursionError)


def parse_problem(exc: BaseException) -> str:
    """What a PARSE_ERRORS error says, in the user's words (never 'use sys.set_int_max_str_digits()')."""
    if isinstance(exc, RecursionError):
        return "nested too deeply to read"
    text = str(exc)
    if "integer string conversion" in text:
        import sys

        return f"a number of more than {sys.get_int_max_str_digits()} digits"
    return text


class UserError(Exception):
    """A problem with what the user gave us (config, data, paths). Never a traceback."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


class ConfigError(UserError):
    """Every config problem found at once; each entry names the dotted key, the value and what is allowed."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration ({len(self.problems)} problem(s)):\n{body}")


class ScoresNotRecorded(UserError):
    """`evaluate` scored the split but could not write the scores into the run's run.json (a read-only or full
    disk): the scores travel with the error, so the command still shows them."""

    def __init__(self, scores: dict, path, exc: OSError):
        self.scores = scores
        super().__init__(f"the scores could not be written into '{path}' ({exc.strerror or exc})",
                         "they are shown above; copy the run to a writable place to keep them in its record")


NAME_MAX = 255  # bytes in one file or folder name on ext4, xfs, btrfs, APFS, NTFS (in UTF-16 units)
PATH_MAX = 4096  # bytes in a whole path on Linux (ENAMETOOLONG beyond it, every name short)


def name_length_problem(path, name: str, last: str = "folder") -> str | None:
    """What is wrong with a path that has a file or folder name over NAME_MAX bytes, or None: the OS refuses the name
    itself (ENAMETOOLONG) at the first stat, and pathlib's exists() / is_file() / is_dir() raise on it (Python 3.11)
    rather than say False, so every path a user gives is checked with this before any of them (check_name_length,
    require_file, the config's path keys). `name`: how the user gave the path (`output_dir`, `--config`, `RUN`);
    `last`: what its last part names."""
    import os
    from pathlib import Path

    parts = Path(path).parts
    too_long = next((k for k, part in enumerate(parts) if len(os.fsencode(part)) > NAME_MAX), None)
    if too_long is None:
        return None
    kind = last if too_long == len(parts) - 1 else "folder"
    return (f"{name} '{path}' has a {kind} name of {len(os.fsencode(parts[too_long]))} bytes; file systems "
            f"take at most {NAME_MAX}")


def check_name_length(path, name: str, fix: str, last: str = "folder") -> None:
    """Refuse a path with a file or folder name over NAME_MAX bytes (name_length_problem), before any stat of it."""
    problem = name_length_problem(path, name, last)
    if problem:
        raise UserError(problem, fix)


def require_file(path, what: str, fix: str, pipe: bool = False) -> None:
    """A UserError unless `path` (a pathlib.Path) is a regular file, saying what it is instead: `-c .` and
    `--file /dev/null` were said not to exist. `pipe`: a named pipe passes too (a FIFO: `<(cmd)`, /dev/stdin on a
    pipe), for a reader that reads it once from start to end; a device (/dev/null, a terminal) still does not. A name
    over NAME_MAX bytes is refused first (is_file() raises on it)."""
    check_name_length(path, what, f"no file can have such a name: give a shorter one ({fix})", last="file")
    if path.is_file() or (pipe and path.is_fifo()):
        return
    state = "does not exist" if not path.exists() else "is a directory" if path.is_dir() else "is not a regular file"
    raise UserError(f"{what} '{path}' {state}", fix)
