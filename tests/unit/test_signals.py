"""signals.shielded: a signal during a record write takes effect at the end of the block, unless the process ignores
it (then it stays ignored, as it is outside the block)."""

import os
import signal

import pytest

from loratune.signals import shielded


def test_a_sigint_during_the_block_is_raised_at_its_end():
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with shielded():
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("the write finished")
    finally:
        signal.signal(signal.SIGINT, old)
    assert reached == ["the write finished"]


def test_an_ignored_sigint_stays_ignored_inside_the_block():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with shielded():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_nested_block_defers_to_the_outermost():
    # the storage's calls are shielded and run inside shielded record writes: the inner block's end must not
    # raise while the outer write is still half done
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    reached = []
    try:
        with pytest.raises(KeyboardInterrupt):
            with shielded():
                with shielded():
                    os.kill(os.getpid(), signal.SIGINT)
                reached.append("the inner block ended")
                with shielded():
                    reached.append("a second inner block ran")
                reached.append("the outer write finished")
        with pytest.raises(KeyboardInterrupt):  # the depth is back to zero: a later block holds signals again
            with shielded():
                os.kill(os.getpid(), signal.SIGINT)
                reached.append("a later block finished")
    finally:
        signal.signal(signal.SIGINT, old)
    assert reached == ["the inner block ended", "a second inner block ran", "the outer write finished",
                       "a later block finished"]


def test_a_signal_carried_by_a_kept_trials_interrupt_keeps_its_exit_code_and_words():
    """FinishedThenInterrupted (a trial that finished as the signal came) carries the signal: its SIGTERM read as
    Ctrl-C (exit 130, "interrupted by the user") where README says 143 / "stopped by SIGTERM"."""
    from loratune.search.runner import FinishedThenInterrupted
    from loratune.search.trial import TrialResult
    from loratune.signals import Terminated, describe, exit_code

    res = TrialResult("completed", 0.5, 80, 1.0)
    assert (exit_code(FinishedThenInterrupted(res, Terminated())), describe(FinishedThenInterrupted(res, Terminated()))
            ) == (143, "stopped by SIGTERM")
    assert (exit_code(FinishedThenInterrupted(res, KeyboardInterrupt())),
            describe(FinishedThenInterrupted(res, KeyboardInterrupt()))) == (130, "interrupted by the user (Ctrl-C)")
    assert (exit_code(Terminated()), exit_code(KeyboardInterrupt())) == (143, 130)
