"""SIGTERM handled like Ctrl-C: `kill`, a scheduler's stop or a container shutdown raise `Terminated`
(a KeyboardInterrupt) in the main thread, so training ends with status `interrupted`, the best
model saved and a valid record, exactly as after Ctrl-C. Exit codes: 130 (SIGINT), 143 (SIGTERM).

A second signal while the record is being written is ignored (the write takes seconds at most), as is one while a
tune trial that finished is diagnosed and its result built (search.runner: a second or so for tens of evaluation
points, ~10 s at 3,000 points of 77 classes); kill -9 cannot be caught: a run killed that way reads as `died` (store.with_liveness).
"""

from __future__ import annotations

import contextlib
import signal
import threading

EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM."""

    signal_name = "SIGTERM"


def _signal_of(exc: BaseException) -> BaseException:
    """The signal's own interrupt: an interrupt that carries the one it stands for (`signal`: a trial that finished
    as the signal came, search.runner.FinishedThenInterrupted) is that signal's."""
    inner = getattr(exc, "signal", None)
    return inner if isinstance(inner, KeyboardInterrupt) else exc


def exit_code(exc: BaseException) -> int:
    return EXIT_SIGTERM if isinstance(_signal_of(exc), Terminated) else EXIT_SIGINT


def describe(exc: BaseException) -> str:
    return "stopped by SIGTERM" if isinstance(_signal_of(exc), Terminated) else "interrupted by the user (Ctrl-C)"


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises `Terminated` once; later ones are ignored until the block ends.
    A no-op outside the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = {"n": 0}

    def handler(signum, frame):
        fired["n"] += 1
        if fired["n"] == 1:
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


_depth = [0]  # shielded blocks open in the main thread (a nested block defers to the outermost)
_pending: list[int] = []  # the signals the outermost shielded block holds, in the order they came


@contextlib.contextmanager
def shielded():
    """Hold SIGINT/SIGTERM off while a record is being written, or while a library that takes locks (Optuna's
    storage, SQLAlchemy, tensorboard's writer) is called: they take effect at the end of the block. Raised inside
    such a call, an interrupt can leave a lock held (an SQLite write lock the next write waits 60 s on). A signal
    the process ignores (SIGINT in a background job of a non-interactive shell) stays ignored inside the block too:
    otherwise one landing during a write would stop the run, and one landing anywhere else would not. Blocks nest:
    only the outermost one raises, once it ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _depth[0]:
        _depth[0] += 1
        try:
            yield
        finally:
            _depth[0] -= 1
        return
    _pending.clear()
    held = [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, lambda signum, frame: _pending.append(signum)) for s in held}
    _depth[0] = 1
    try:
        yield
    finally:
        _depth[0] = 0
        for s, h in old.items():
            signal.signal(s, h)
        stop = take_held()
        if stop is not None:
            raise stop


def take_held() -> KeyboardInterrupt | None:
    """The interrupt a signal held by the shielded block now open would raise as the block ends, taken from it (the
    block then ends without raising it); None where none is held. Inside the block, a caller can then write the record
    the signal calls for with the signals still held, and raise it itself, or drop it for an error that ends the
    call anyway and says more."""
    if not _pending:
        return None
    first = _pending[0]
    _pending.clear()
    return Terminated() if first == signal.SIGTERM else KeyboardInterrupt()
