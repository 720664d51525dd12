"""The ranks' teardown under DDP: the process group must not die inside DDP's Reducer (see DataParallel.close)."""

import torch

from loratune.sft import DataParallel


class _Reducer:
    pass


def test_close_drops_the_ddp_reducer_and_logger_before_the_process_group_is_destroyed():
    seen = {}

    class Acc:
        def end_training(self):
            seen["reducer"] = hasattr(wrapped, "reducer")
            seen["logger"] = hasattr(wrapped, "logger")

    wrapped = torch.nn.Linear(2, 2)  # stands for DistributedDataParallel: an nn.Module with these two attributes
    wrapped.reducer, wrapped.logger = _Reducer(), _Reducer()
    ranks = object.__new__(DataParallel)  # no process group in a unit test
    ranks.acc, ranks.wrapped = Acc(), wrapped
    ranks.close()
    assert seen == {"reducer": False, "logger": False}
    assert isinstance(wrapped.weight, torch.nn.Parameter)  # the module itself untouched


def test_close_before_any_model_was_wrapped_only_ends_training():
    ended = []

    class Acc:
        def end_training(self):
            ended.append(True)

    ranks = object.__new__(DataParallel)
    ranks.acc = Acc()
    ranks.close()
    assert ended == [True]
