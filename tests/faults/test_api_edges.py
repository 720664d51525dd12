"""Edges of the Python API and the CLI shell found by a tester: a reused output_dir, `~` in paths, compare's and
tune's input checks, a refused resume, a closed pipe, paths that are no regular file, process-wide state."""

from __future__ import annotations

import pytest

from loratune.cli import main

from support import flat, run_record


def test_a_fresh_run_in_a_reused_directory_drops_the_old_runs_report(tmp_path):
    from loratune.report import default_output
    from loratune.store import RunStore

    out = tmp_path / "run"
    out.mkdir()
    old = default_output(out)  # where `loratune report RUN` wrote the old run's report
    old.write_text("<html>lr 0.005, 12 steps</html>", encoding="utf-8")
    (out / "run.json").write_text(run_record("completed"))  # the old run's (a report no run wrote is refused)
    store = RunStore(out)
    store.create("train: {}\n")
    try:
        assert not old.exists()  # it described the old run; the new one has none until `loratune report`
        assert (out / "config.yaml").is_file()
    finally:
        store.close()


def test_a_tilde_in_output_dir_and_path_arguments_is_the_home_folder(tiny_bert, intent_data, tmp_path,
                                                                       monkeypatch):
    import json

    from loratune import api

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    (home / "cfg.yaml").write_text("output_dir: ~/runs/latest\nmax_steps: 4\n", encoding="utf-8")
    from support import overrides

    given = [o for o in overrides(tiny_bert, intent_data, tmp_path / "unused", max_steps=4, eval_steps=2)
             if not o.startswith(("output_dir=", "max_steps="))]
    cfg = api.load_config("~/cfg.yaml", [*given, "num_threads=1"])  # the config file itself under ~ too
    assert cfg.train.output_dir == str(home / "runs" / "latest")
    assert api.load_config(None, ["output_dir=~/x"]).train.output_dir == str(home / "x")
    run = api.train(cfg, progress=False)
    assert run["status"] == "completed"
    assert not (cwd / "~").exists()  # no folder literally named `~` in the current one
    assert (home / "runs" / "latest" / "run.json").is_file()
    recorded = json.loads((home / "runs" / "latest" / "run.json").read_text(encoding="utf-8"))
    assert "~" not in json.dumps(recorded)
    assert api.diagnose("~/runs/latest").verdict
    assert len(api.predict("~/runs/latest", ["lost my card"])) == 1
    assert "accuracy" in json.dumps(api.evaluate("~/runs/latest", split="validation"))
    assert api.report("~/runs/latest", "~/r.html", examples=False) == home / "r.html"
    assert (home / "r.html").is_file()


RUNS = __import__("pathlib").Path(__file__).resolve().parents[1] / "fixtures" / "runs"


@pytest.mark.parametrize("call, said", [
    (lambda api: api.compare([1, 2]), "runs[0]: a folder path (str or Path), not int 1"),
    (lambda api: api.compare([str(RUNS / "lrsmall-b77-1e-6")] * 2, thresholds=5), "thresholds: a mapping"),
    (lambda api: api.compare(x for x in [str(RUNS / "lrsmall-b77-1e-6")]), "two or more runs, got 1"),
    (lambda api: api.compare(7), "two or more runs, got int 7"),
])
def test_compare_checks_its_input_as_diagnose_does(call, said):
    from loratune import api
    from loratune.errors import UserError

    with pytest.raises(UserError) as exc:
        call(api)
    assert said in str(exc.value)


def test_compare_reads_a_generator_of_runs_once():
    from loratune import api

    names = ("lrsmall-b77-1e-6", "lrsmall-b77-3e-6")
    c = api.compare(str(RUNS / n) for n in names)
    assert c.runs == names  # (the generator was consumed by the length check: an empty comparison)


def test_tune_names_an_unknown_keyword_and_the_known_ones(tmp_path):
    from loratune import api
    from loratune.errors import UserError

    with pytest.raises(UserError) as exc:
        api.tune(api.load_config(None, []), study_dir=tmp_path / "s", foo=1)
    text = str(exc.value)
    assert "'foo'" in text and "study_name" in text and "budget" in text and "trial_steps" in text
    assert not (tmp_path / "s").exists()


def test_a_refused_resume_leaves_nothing_behind(tmp_path, capsys):
    new = tmp_path / "ns2" / "deeper"  # folders the refused call would make
    assert main(["tune", "--resume", "--study-dir", str(new)]) == 2
    assert "no study named 'loratune'" in flat(capsys.readouterr().err)
    assert not (tmp_path / "ns2").exists()  # (a study.db that `show` read as an unfinished study of 0 trials)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["tune", "--resume", "--study-dir", str(empty)]) == 2
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]  # a folder the user had stays, as it was


def test_a_closed_pipe_does_not_turn_a_completed_train_into_a_failure(tiny_bert, intent_data, tmp_path,
                                                                      monkeypatch):
    """`loratune train ... | head -1`: the reader leaves before the summary; the run completed, so the exit is 0."""
    import io
    import json
    import sys

    from support import overrides

    class Gone(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Gone())
    out = tmp_path / "bp1"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out), "num_threads=1"]) == 0
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["status"] == "completed"


def test_a_closed_pipe_exits_with_the_commands_own_code():
    """The same in a real pipe whose read end is closed (`loratune diagnose RUN | head -1`), with no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "loratune.cli", "diagnose", str(RUNS / "lrsmall-b77-1e-6")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.parametrize("argv, said", [
    (["train", "-c", "{dir}"], "config file '{dir}' is a directory"),
    (["train", "-c", "/dev/null"], "config file '/dev/null' is not a regular file"),
    (["predict", "{run}", "--file", "/dev/null"], "file '/dev/null' is not a regular file"),
    (["predict", "{run}", "--file", "{dir}"], "file '{dir}' is a directory"),
    (["predict", "{run}", "--file", "{dir}/none.txt"], "file '{dir}/none.txt' does not exist"),
])
def test_a_path_that_is_no_regular_file_is_named_for_what_it_is(argv, said, tmp_path, capsys):
    run = RUNS / "lrsmall-b77-1e-6"
    fill = {"dir": str(tmp_path), "run": str(run)}
    assert main([a.format(**fill) for a in argv]) == 2
    assert said.format(**fill) in flat(capsys.readouterr().err)


def test_api_train_leaves_the_callers_threads_env_and_progress_bars_as_they_were(tiny_bert, intent_data, tmp_path,
                                                                                 monkeypatch):
    import os

    import torch
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    from loratune import api
    from loratune.train import cpu_cores

    from support import overrides

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    before = torch.get_num_threads()
    hf_logging.disable_progress_bar()  # the caller's choice: bars off (the run turned them on again)
    try:
        torch.set_num_threads(1)
        cfg = api.load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=4, eval_steps=2))
        assert cfg.train.num_threads is None and cpu_cores() > 1  # the run sets every core
        assert api.train(cfg, progress=False)["threads"] == cpu_cores()
        assert torch.get_num_threads() == 1
        assert "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ
        assert not hf_logging.is_progress_bar_enabled() and hub_utils.are_progress_bars_disabled()
        hf_logging.enable_progress_bar()  # and bars on stay on
        api.train(api.load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run2", max_steps=2,
                                                   eval_steps=2, num_threads=1)), progress=False)
        assert hf_logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()
    finally:
        torch.set_num_threads(before)
        hf_logging.enable_progress_bar()


def test_api_train_and_plan_refuse_what_the_clis_train_refuses_before_the_earlier_run_is_replaced(
        trained, tiny_bert, intent_data, tmp_path, capsys):
    # api.train ran none of api.check: max_length 512 on 128 learned positions failed inside the embedding after the
    # earlier run in output_dir was deleted (or completed where no text was that long); api.plan (the dry run)
    # returned a plan for it and for a probe_file that does not exist
    import shutil

    from loratune import api
    from loratune.errors import UserError

    from support import overrides

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "run.json").read_bytes()
    long = api.load_config(None, overrides(tiny_bert, intent_data, run, max_length=512))
    said = f"model.max_length 512 is longer than {tiny_bert} takes: its position embeddings cover 128 tokens"
    for call in (lambda: api.train(long, progress=False), lambda: api.plan(long)):
        with pytest.raises(UserError) as exc:
            call()
        assert flat(str(exc.value)) == f"{said} fix: set max_length=128 or less"
    assert (run / "run.json").read_bytes() == before and "replaced by this run" not in capsys.readouterr().err
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, run, max_length=512)]) == 2
    assert said in flat(capsys.readouterr().err)  # the CLI's words, from the same check
    gone = tmp_path / "probe.jsonl"
    with pytest.raises(UserError, match="probe file .* does not exist"):
        api.plan(api.load_config(None, overrides(tiny_bert, intent_data, run, probe_file=str(gone))))


def test_api_train_leaves_the_callers_random_generators_as_they_were(tiny_bert, intent_data, tmp_path):
    # the run seeded random, numpy and torch with train.seed and left them so: whatever seed the notebook had set,
    # its next draw after api.train was seed 42's
    import random

    import numpy as np
    import rich.style  # noqa: F401  (its first import draws from `random`: not the run's doing)
    import torch

    from loratune import api

    from support import overrides

    cfg = api.load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=2, eval_steps=2))
    draws = []
    for seed in (1, 2):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        random.random(), np.random.rand(), torch.rand(1)  # the caller's generators part-way, not fresh
        before = (random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state().clone())
        assert api.train(cfg, progress=False)["status"] == "completed"
        assert random.getstate() == before[0] and (np.random.get_state()[1] == before[1]).all()
        assert torch.equal(torch.random.get_rng_state(), before[2]) and torch.initial_seed() == seed
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    random.random(), np.random.rand(), torch.rand(1)
    assert draws[0] == (random.random(), float(np.random.rand()), float(torch.rand(1))) != draws[1]


FIRST_CALL = """
import json, random, sys
import numpy as np, torch
from loratune import api
cfg = api.load_config(None, json.loads(sys.argv[1]))
fresh = "rich.style" not in sys.modules  # (the first call imports it, and its import draws from `random`)
random.seed(5), np.random.seed(5), torch.manual_seed(5)
before = (random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state().tolist())
if sys.argv[2] == "train":
    assert api.train(cfg, progress=False)["status"] == "completed"
else:
    assert len(api.tune(cfg, budget="1trials", trial_steps=2, study_dir=sys.argv[3], full_probe=False)["trials"]) == 1
after = (random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state().tolist())
print(json.dumps({"fresh": fresh, "same": [a == b for a, b in zip(before, after)], "next": random.random()}))
"""


@pytest.mark.parametrize("verb", ["train", "tune"])
def test_the_first_api_call_in_a_process_leaves_the_callers_random_generators_as_they_were(
        verb, tiny_bert, intent_data, tmp_path):
    # the first api.train / api.tune in a process imported rich (through loratune.slices -> sklearn) before the
    # generators were read: rich.style's getrandbits at import moved the caller's `random` (README: left as they were)
    import json
    import os
    import random
    import subprocess
    import sys

    from support import overrides

    args = overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=2, eval_steps=2, num_threads=1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", FIRST_CALL, json.dumps(args), verb, str(tmp_path / "study")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["fresh"]  # the api call is the process's first import of rich, as in a fresh notebook
    assert got["same"] == [True, True, True]  # random, numpy, torch
    assert got["next"] == random.Random(5).random()


def test_api_tune_and_report_leave_optunas_log_level_as_it_was(tmp_path):
    # Study.open and the study report set Optuna's level to WARNING for the rest of the process
    import optuna

    from loratune import api
    from loratune.errors import UserError

    d = tmp_path / "study"
    d.mkdir()
    was = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)  # the caller's
    try:
        optuna.create_study(study_name="loratune", storage=f"sqlite:///{d / 'study.db'}").ask()
        assert api.report(d, examples=False) == d / "report.html"
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
        with pytest.raises(UserError, match="no study named 'loratune' .* to resume"):  # refused in Study.open
            api.tune(api.load_config(None, []), resume=True, study_dir=tmp_path / "none")
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(was)


def test_api_tune_leaves_the_callers_torch_generator_as_it_was(tiny_bert, intent_data, tmp_path):
    # phase 0 and the finish drew from torch's generator outside the trials (which keep it, as api.train does)
    import torch

    from loratune import api

    from support import overrides

    cfg = api.load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=4, eval_steps=2))
    torch.manual_seed(5)
    before = torch.random.get_rng_state().clone()
    summary = api.tune(cfg, budget="1trials", trial_steps=2, study_dir=tmp_path / "s", full_probe=False)
    assert len(summary["trials"]) == 1
    assert torch.equal(torch.random.get_rng_state(), before) and torch.initial_seed() == 5
