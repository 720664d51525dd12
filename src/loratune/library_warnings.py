"""The libraries' warnings loratune silences, defined once as data: deprecation notices (transformers'
`is_gradient_checkpointing` on every peft load, peft probing deprecated transformers attributes) are for those
libraries' API callers, not for someone running `loratune predict` or calling `loratune.api.predict`. The CLI
installs them for its process; the library's own loads (adapt, models.load_saved, inference, search.runner) hold
them only around the call, so a Python caller's own filters outlive it."""

from __future__ import annotations

import contextlib
import warnings

# each entry: the keyword arguments of warnings.filterwarnings("ignore", ...)
SILENCED = (
    {"category": FutureWarning, "module": r"(transformers|peft|torch)(\.|$)"},
)


def silence() -> None:
    """The filters of SILENCED added to the current warnings filters (the CLI: for the whole process)."""
    for entry in SILENCED:
        warnings.filterwarnings("ignore", **entry)


@contextlib.contextmanager
def silenced():
    """The filters of SILENCED inside the block only, the caller's filters restored after it."""
    with warnings.catch_warnings():
        silence()
        yield
