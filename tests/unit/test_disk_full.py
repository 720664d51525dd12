"""A full disk or quota is one rule (errors.disk_full), and every writer that says "full" says it for the same
failures: a run's outputs (train.output_error), a prefix-cache entry (prefix_cache._write_failure) and a study's
storage (search.study.write_fault)."""

from __future__ import annotations

import errno

import pytest

from loratune import prefix_cache, train
from loratune.search import study

FULL = [
    OSError(errno.ENOSPC, "No space left on device", "/cache/prefix/k.values.npy"),
    OSError(errno.EDQUOT, "Disk quota exceeded", "/cache/prefix/k.values.npy"),
    # safetensors' Rust writer gives no errno, only the io::Error's text
    OSError('Os { code: 28, kind: StorageFull, message: "No space left on device" }'),
    OSError('Os { code: 122, kind: FilesystemQuotaExceeded, message: "Disk quota exceeded" }'),
]
NOT_FULL = [
    OSError(errno.EIO, "Input/output error", "/cache/prefix/k.values.npy"),
    OSError(errno.ENOENT, "No such file or directory", "/cache/prefix/k.values.npy.tmp-1"),
]


def verdicts(exc: OSError) -> dict:
    out = train.output_error(exc, "out")
    fault = study.write_fault(exc)
    return {"output_error": out is not None and "is full" in out.problem,
            "prefix_cache": "free space there" in prefix_cache._write_failure(2**20, exc),
            "study": fault is not None and "is full" in fault.problem}


@pytest.mark.parametrize("exc", FULL, ids=lambda e: str(e)[:40])
def test_every_writer_says_a_full_disk_or_quota_is_full(exc):
    assert verdicts(exc) == {"output_error": True, "prefix_cache": True, "study": True}


@pytest.mark.parametrize("exc", NOT_FULL, ids=lambda e: str(e)[:40])
def test_no_writer_says_another_failure_is_full(exc):
    v = verdicts(exc)
    assert v == {"output_error": False, "prefix_cache": False, "study": False}
    assert "if another process shares that folder" in prefix_cache._write_failure(2**20, exc)
