"""Output faults on real file systems, where this machine lets us mount one (root with CAP_SYS_ADMIN;
skipped otherwise, the patched-writer tests in test_train_faults.py cover the same paths): a tiny tmpfs
that fills up mid-run, and a read-only mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.store import RunStore

from support import overrides


def _mount(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def tiny_fs(tmp_path):
    where = tmp_path / "fs"
    if not _mount(where, "size=512k"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_disk_that_fills_up_mid_run(tiny_bert, intent_data, tiny_fs, capsys):
    out = tiny_fs / "run"
    free = os.statvfs(tiny_fs).f_bavail * os.statvfs(tiny_fs).f_frsize
    (tiny_fs / "filler").write_bytes(b"\0" * max(0, free - 24 * 1024))  # about 24 KiB left: a few eval points
    rc = main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=400, eval_steps=2,
                                         slices="false", robustness_probe="false")])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2, err
    assert "is full" in err and "fix:" in err and "Traceback" not in err
    run = RunStore(out).read_run()  # what was written before the disk filled is there and readable
    assert run["status"] in ("died", "failed") and RunStore(out).read_history()


def test_a_read_only_mount(tiny_bert, intent_data, tmp_path, capsys):
    where = tmp_path / "ro"
    if not _mount(where, "size=64k,ro"):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        for cmd in (["train", "--dry-run"], ["train", "-q"]):
            assert main([*cmd, *overrides(tiny_bert, intent_data, where / "run")]) == 2
            err = " ".join(capsys.readouterr().err.split())
            assert "not writable" in err and "fix:" in err
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
