"""A Ctrl-C / SIGTERM landing inside an Optuna storage call (a trial's report, a user attr) must not leave the
SQLite write lock held: the interrupted trial's record is written next, and on the unshielded storage that write
waited SQLite's 60 s busy timeout and failed (CI: a SIGTERM'd `tune` still running after 60 s). The storage's
calls are shielded (study._shielded_storage); this drives interrupts into them at random moments, in a child
process (a KeyboardInterrupt must not reach pytest)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHILD = textwrap.dedent("""
    import os, random, signal, sys, threading, time
    from loratune.search.study import Study
    from loratune.search.trial import TrialSpec

    study = Study.open(sys.argv[1], meta={"strategy": "random"})
    rng, step, landed = random.Random(0), 0, 0
    for i in range(int(sys.argv[2])):
        handle, _ = study.start(TrialSpec(f"t{i}", "search", {"train.learning_rate": 1e-4 * (i + 1)}))
        timer = threading.Timer(rng.uniform(0, 0.02), lambda: os.kill(os.getpid(), signal.SIGINT))
        try:
            timer.start()  # inside the try: on a loaded machine the signal can land before start() returns
            while True:
                step += 1
                handle.report(0.5, step)
                handle.set_user_attr("step", step)
        except KeyboardInterrupt:
            landed += 1
        timer.join()
        t0 = time.perf_counter()
        study.fail(handle, "interrupted")  # what `tune` writes after an interrupt
        if time.perf_counter() - t0 > 5:
            print(f"write after interrupt {i} took {time.perf_counter() - t0:.0f} s")
            sys.exit(1)
    print(f"ok {landed}")
""")


def test_an_interrupt_inside_a_storage_call_leaves_no_lock(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "study"), "40"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["ok", "40"]


CLOSE_CHILD = textwrap.dedent("""
    import importlib, os, signal, sys
    tune_mod = importlib.import_module("loratune.search.tune")  # (the package's `tune` is the function)
    from loratune.search.study import Study

    where = sys.argv[1]
    # an interrupt inside close (the lease's stop) still lets the study directory go
    study = Study.open(where + "/a", meta={"strategy": "random"})
    def stop_hit():
        raise KeyboardInterrupt
    study._lease.stop = stop_hit
    try:
        study.close()
    except KeyboardInterrupt:
        pass
    Study.open(where + "/a", resume=True).close()  # was: 'another `loratune tune` (pid <this one>) is running'
    print("close ok")

    # a Ctrl-C landing as tune() starts closing its study waits until the lock is let go
    def fake_tune(cfg, options, ui, *, runner, dataset, opened):
        opened.append(Study.open(where + "/b", meta={"strategy": "random"}))
        return {}
    tune_mod._tune = fake_tune
    orig = Study.close
    def close_as_ctrl_c_lands(self):
        os.kill(os.getpid(), signal.SIGINT)
        orig(self)
    Study.close = close_as_ctrl_c_lands
    try:
        tune_mod.tune(None)
        print("no interrupt")
    except KeyboardInterrupt:
        pass
    Study.close = orig
    Study.open(where + "/b", resume=True).close()
    print("tune ok")
""")


def test_an_interrupt_as_a_study_closes_still_releases_its_directory(tmp_path):
    # a Ctrl-C while api.tune closed its study left the study locked for the rest of the process: close released the
    # lock last, after the lease's stop and a DB write, and tune's close was not shielded
    proc = subprocess.run([sys.executable, "-c", CLOSE_CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split("\n")[:2] == ["close ok", "tune ok"], proc.stdout + proc.stderr
