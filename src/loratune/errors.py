"""User-facing errors: each names the problem and the fix. The CLI prints them and exits 2."""

from __future__ import annotations


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
