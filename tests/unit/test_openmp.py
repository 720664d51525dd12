"""How OpenMP threads wait (loratune/openmp.py): spin on a quiet machine, sleep beside other jobs, and never
override what the user set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from loratune import openmp


def _never() -> float:
    raise AssertionError("the machine is not sampled when the user set the policy")


@pytest.mark.parametrize("given", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "0"}])
def test_a_policy_the_user_set_is_kept_and_the_machine_not_sampled(given):
    environ = dict(given)
    choice = openmp.choose(environ, _never)
    assert environ == given
    assert choice["wait"] == "environment" and {k: choice[k] for k in given} == given


def test_a_quiet_machine_spins_a_bounded_count_and_keeps_passive_for_other_runtimes():
    environ: dict[str, str] = {}
    choice = openmp.choose(environ, lambda: 0.0)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": str(openmp.SPIN_COUNT)}
    assert choice["wait"] == "spin" and choice["GOMP_SPINCOUNT"] == openmp.SPIN_COUNT == 10_000
    assert choice["others_runnable"] == 0.0


@pytest.mark.parametrize("others", [1.0, 2.0, 4.0])  # whole tasks: the median of 5 counts
def test_beside_other_runnable_tasks_threads_sleep(others):
    environ: dict[str, str] = {}
    choice = openmp.choose(environ, lambda: others)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert choice["wait"] == "passive" and choice["others_runnable"] == others
    assert f"{others:g} other tasks runnable" in choice["reason"]


def test_no_proc_to_read_means_passive_as_before():
    environ: dict[str, str] = {}
    choice = openmp.choose(environ, lambda: None)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"} and choice["wait"] == "passive"
    assert "no /proc/loadavg" in choice["reason"] and choice["others_runnable"] is None


def test_runnable_others_is_the_median_less_the_reader(monkeypatch):
    monkeypatch.setattr(openmp, "SAMPLE_GAP_S", 0.0)
    reads = iter(["0.50 0.40 0.30 3/120 999"] * openmp.SAMPLES)
    assert openmp.runnable_others(lambda: next(reads)) == 2.0  # three running, one of them this process
    # a process that ran for one sample (a pipeline starting beside this one) does not count
    counts = iter([1, 1, 5, 1, 1])
    assert openmp.runnable_others(lambda: f"0 0 0 {next(counts)}/80 1") == 0.0
    assert openmp.runnable_others(lambda: "garbled") is None

    def missing() -> str:
        raise FileNotFoundError("/proc/loadavg")

    assert openmp.runnable_others(missing) is None


def test_importing_loratune_sets_the_policy_and_says_whether_torch_was_loaded_before():
    """In a fresh interpreter: importing loratune first sets the policy before torch loads its OpenMP runtime
    (`applied`); importing torch first leaves the choice without effect, and the record says so."""
    code = ("import json, os, sys\n{first}\nimport loratune\nfrom loratune import openmp\n"
            "print(json.dumps({{'choice': openmp.CHOICE, 'env': {{k: os.environ.get(k) for k in openmp.USER_KEYS}}}}))")
    env = {k: v for k, v in os.environ.items() if k not in openmp.USER_KEYS}
    for first, applied in (("", True), ("import torch", False)):
        out = subprocess.run([sys.executable, "-c", code.format(first=first)], env=env, capture_output=True,
                             text=True, check=True, timeout=120).stdout
        got = json.loads(out.splitlines()[-1])
        assert got["choice"]["applied"] is applied
        assert got["choice"]["wait"] in ("spin", "passive")
        assert got["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
        assert (got["env"]["GOMP_SPINCOUNT"] == str(openmp.SPIN_COUNT)) == (got["choice"]["wait"] == "spin")
