"""`loratune tune` end to end on a tiny random-init BERT: the study on disk, and resume after kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.config import load_config

from support import overrides


def _tune_args(tiny_bert, intent_data, study: Path, *extra: str) -> list[str]:
    ov = overrides(tiny_bert, intent_data, study / "unused", learning_rate=2e-2, num_threads=1)
    ov = [o for o in ov if not o.startswith(("max_steps=", "eval_steps=", "output_dir="))]
    return ["tune", *ov, "--study-dir", str(study), "-q", *extra]


def _optuna_trials(study: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}")
    return s.get_trials(deepcopy=False)


def test_protocol_study_end_to_end(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    rc = main(_tune_args(tiny_bert, intent_data, study, "--budget", "6trials", "--trial-steps", "12"))
    out = capsys.readouterr().out
    assert rc == 0, out
    # every decision printed with its evidence, and persisted
    decisions = [json.loads(line) for line in (study / "decisions.jsonl").read_text().splitlines()]
    phases = [d["phase"] for d in decisions]
    assert phases[:2] == ["phase0", "phase0"] and "phase1-lr-grid" in phases and "lora-vs-full" in phases
    assert phases[-1] == "finish"
    assert all(d["evidence"] for d in decisions)
    assert "phase1-lr-grid best lr" in out
    # every trial an Optuna trial and an ordinary run directory
    trials = _optuna_trials(study)
    assert 1 <= len(trials) <= 6
    for t in trials:
        rec = t.user_attrs["record"]
        assert {"key", "phase", "run_dir", "status", "point"} <= set(t.user_attrs)
        run_dir = Path(rec["run_dir"])
        assert run_dir.parent == study / "trials" and (run_dir / "run.json").exists()
        assert json.loads((run_dir / "run.json").read_text())["status"] in ("completed", "interrupted", "diverged")
    assert len({t.user_attrs["key"] for t in trials}) == len(trials)
    # final outputs
    final = study / "final"
    summary = json.loads((final / "study.json").read_text())
    for key in ("trail", "trials", "best_vs_compute", "rank_vs_metric", "lora_vs_full", "recommendation", "budget"):
        assert key in summary
    assert summary["budget"]["spent"]["trials"] == len(trials) <= 6
    rec = summary["recommendation"]
    assert rec["test"]["test/macro_f1"] is not None
    assert (final / "adapter" / "adapter_config.json").exists() or (final / "adapter" / "model.safetensors").exists()
    cfg = load_config(final / "config.yaml")  # a ready-to-use config
    # the pick is a 12-step trial or a long run of one (trained early or at the end: 2-8x a trial, phase 0's epochs)
    assert cfg.train.max_steps == 12 or 24 <= cfg.train.max_steps <= 96
    assert cfg.train.output_dir == "runs/tuned"
    assert json.loads((final / "test.json").read_text())["trial"] == rec["trial"]
    # a second run into the same folder must not silently mix studies
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "1trials")) == 2


def test_yardstick_uses_the_same_budget(tiny_bert, intent_data, tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "tpe"
    assert main(_tune_args(tiny_bert, intent_data, study, "--strategy", "random", "--budget", "3trials",
                           "--trial-steps", "8")) == 0
    trials = _optuna_trials(study)
    assert len(trials) == 3 and all("train.learning_rate" in t.params for t in trials)
    summary = json.loads((study / "final" / "study.json").read_text())
    assert summary["strategy"] == "random" and summary["budget"]["spent"]["trials"] == 3


def test_the_exported_model_card_describes_final_and_its_command_runs(tiny_bert, intent_data, tmp_path, monkeypatch,
                                                                      capsys):
    """The card copied into final/adapter pointed to ../run.json and ../history.jsonl, which final/ lacks, and to
    `loratune predict RUN_DIR`, refused on final/: it names the study's files beside it and the pick's trial directory
    (its run record, what predict reads), each there, and its command runs."""
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    assert main(_tune_args(tiny_bert, intent_data, study, "--strategy", "random", "--budget", "2trials",
                           "--trial-steps", "8")) == 0
    final = study / "final"
    rec = json.loads((final / "study.json").read_text())["recommendation"]
    card = (final / "adapter" / "README.md").read_text()
    assert card.startswith("# Text classifier trained with loratune") and "RUN_DIR" not in card
    assert sorted(re.findall(r"`\.\./([\w.]+)`", card)) == ["config.yaml", "study.json", "test.json"]
    assert all((final / name).is_file() for name in ("config.yaml", "study.json", "test.json"))
    assert f"trial #{rec['trial']} ({rec['name']})" in card
    shown = re.search(r'loratune predict (\S+) "some text"', card).group(1)
    assert shown == f"STUDY_DIR/trials/{Path(rec['run_dir']).name}" and f"in the trial's run directory, `{shown}`" in card
    run_dir = study / shown.removeprefix("STUDY_DIR/")
    assert all(f"`{name}`" in card and (run_dir / name).is_file() for name in ("run.json", "history.jsonl"))
    capsys.readouterr()
    assert main(["predict", str(run_dir), "lost my card"]) == 0
    assert capsys.readouterr().out.split()[0] in json.loads((final / "adapter" / "label_map.json").read_text())["labels"]


def test_a_trial_with_gradient_accumulation_is_planned_and_charged_as_what_it_trains(tiny_bert, intent_data, tmp_path,
                                                                                      monkeypatch):
    """48 rows at batch 8, 4 micro-batches a step: an epoch is 2 steps (4 micro-batches, then its remaining 2), so 8
    steps are 4 epochs, 192 examples. Planned and estimated as 64 (steps x batch), the study spent 640 of a
    600-example budget."""
    from loratune.steps import examples_for

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "accum"
    assert main(_tune_args(tiny_bert, intent_data, study, "gradient_accumulation_steps=4", "--strategy", "random",
                           "--budget", "600ex", "--trial-steps", "8")) == 0
    summary = json.loads((study / "final" / "study.json").read_text())
    assert summary["plan"]["examples"] == 192 and summary["plan"]["max_steps"] == 8
    assert summary["plan"]["epochs"] == 4.0 and "8 steps x 8 x 4 accumulated" in summary["plan"]["reason"]
    trials = [t for t in _optuna_trials(study) if "record" in t.user_attrs]
    for t in trials:  # random samples the length too; a trial pruned on a losing lr-too-large verdict stops early
        run = json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text())
        steps = t.user_attrs["point"]["train.max_steps"] if run["status"] == "completed" else run["steps_done"]
        assert run["examples_seen"] == examples_for(48, 8, 4, steps)
    assert trials and summary["budget"]["spent"]["examples"] == sum(
        json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text())["examples_seen"] for t in trials) <= 600


def test_resume_after_kill_keeps_every_finished_trial(tiny_bert, intent_data, tmp_path):
    study = tmp_path / "study"
    env = {**os.environ, "LORATUNE_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    args = _tune_args(tiny_bert, intent_data, study, "--budget", "5trials", "--trial-steps", "120")
    proc = subprocess.Popen([sys.executable, "-m", "loratune.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        killed_in = None
        while time.time() < deadline and proc.poll() is None:
            running = sorted((study / "trials").glob("01-*/history.jsonl")) if (study / "trials").exists() else []
            if running and len(running[0].read_text().splitlines()) >= 2:  # trial 0 done, trial 1 mid-way
                killed_in = running[0].parent
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert killed_in is not None, "the study ended before it could be killed mid-trial"
    from loratune.report.study import build_study_report
    from loratune.store import RunStore

    assert RunStore(killed_in).read_run()["status"] == "died"  # never `running` forever
    shown = {t.number: t.status for t in build_study_report(study).trials}
    assert "died" in shown.values(), shown  # the study report includes the killed trial
    before = {t.number: t for t in _optuna_trials(study)}
    finished_before = {n: t.user_attrs["key"] for n, t in before.items() if "record" in t.user_attrs}
    assert finished_before, "no finished trial before the kill"
    # a finished trial's training record: its history untouched, its run.json the same but for the test-split scores
    # the study writes into the run it picks at the end (a kept trial can be that pick)
    mtimes = {n: (Path(before[n].user_attrs["run_dir"]) / "history.jsonl").stat().st_mtime for n in finished_before}
    records = {n: json.loads((Path(before[n].user_attrs["run_dir"]) / "run.json").read_text()) for n in finished_before}
    n_decisions = len((study / "decisions.jsonl").read_text().splitlines())
    # run.json's wall_s is 0.0 until a run ends; its examples_seen can lag its last history point by a moment
    cut = json.loads((killed_in / "history.jsonl").read_text().splitlines()[-1])
    assert cut["examples_seen"] > 0

    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "5trials", "-q"]) == 0

    after = _optuna_trials(study)
    killed = [t for t in after if t.number not in finished_before and t.user_attrs.get("status") == "killed"]
    assert len(killed) == 1 and Path(killed[0].user_attrs["run_dir"]) == killed_in
    finished = [t for t in after if "record" in t.user_attrs]
    keys = [t.user_attrs["key"] for t in finished]
    assert len(keys) == len(set(keys)), "a finished trial was run again"
    for n, key in finished_before.items():  # kept, not retrained
        assert key in keys
        assert (Path(before[n].user_attrs["run_dir"]) / "history.jsonl").stat().st_mtime == mtimes[n]
        now = json.loads((Path(before[n].user_attrs["run_dir"]) / "run.json").read_text())
        scored = ("eval", "test")  # what inference.evaluate writes into the run it scores on the test split
        assert {k: v for k, v in now.items() if k not in scored} == \
            {k: v for k, v in records[n].items() if k not in scored}
    assert killed[0].user_attrs["key"] in keys  # the cut trial's point was trained again
    decisions = [json.loads(x) for x in (study / "decisions.jsonl").read_text().splitlines()]
    assert len(decisions) > n_decisions
    assert [d["seq"] for d in decisions] == list(range(len(decisions))), "decisions written twice"
    summary = json.loads((study / "final" / "study.json").read_text())
    assert summary["budget"]["spent"]["trials"] == len(finished) <= 5
    assert {r["trial"]: r["status"] for r in summary["trials"]}[killed[0].number] == "died"
    # what the killed trial trained stays spent: its examples, and its wall time from its timestamps
    label = f"trial #{killed[0].number} lost to a killed process"
    lost = [c for c in summary["budget"]["ledger"] if c["label"] == label]
    assert len(lost) == 1 and lost[0]["cost"]["examples"] == cut["examples_seen"] and lost[0]["cost"]["wall_s"] > 0
    assert summary["budget"]["spent"]["examples"] == sum(c["cost"]["examples"] for c in summary["budget"]["ledger"])
    resumed = [d for d in decisions if d["code"] == "study-resumed"]  # the trail says the study was resumed
    assert len(resumed) == 1 and resumed[0]["trials"] == [killed[0].number] and resumed[0]["seq"] >= n_decisions
    assert resumed[0]["data"]["spent"]["examples"] == cut["examples_seen"]
    assert json.loads((killed_in / "run.json").read_text())["status"] == "died"  # rewritten on resume


@pytest.mark.parametrize("bad", [["--budget", "soon"], ["--strategy", "bayes"]])
def test_bad_arguments(bad, tmp_path, capsys):
    with pytest.raises(SystemExit) if bad[0] == "--strategy" else _no_raise():
        rc = main(["tune", "--study-dir", str(tmp_path / "s"), *bad])
        assert rc == 2
        assert "budget" in capsys.readouterr().err


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_unknown_arms_are_refused_before_anything_trains(tmp_path, capsys):
    assert main(["tune", "--study-dir", str(tmp_path / "s"), "--arms", "loraplus,qlora"]) == 2
    err = capsys.readouterr().err
    assert "unknown arm(s) 'qlora'; known: loraplus, dora" in err and not (tmp_path / "s").exists()


@pytest.mark.parametrize("key", ["output_dir", "train.output_dir"])
def test_an_output_dir_on_the_command_line_is_refused_naming_study_dir(key, tiny_bert, intent_data, tmp_path,
                                                                       monkeypatch, capsys):
    """`tune --budget 2trials ... output_dir=X` left X unused and wrote the study to ./runs/tune."""
    monkeypatch.chdir(tmp_path)
    wanted = tmp_path / "my study"
    assert main(["tune", "-q", "--budget", "2trials", "--data", str(intent_data), f"name_or_path={tiny_bert}",
                 f"{key}={wanted}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{key}={wanted} is not read" in err and f"give --study-dir '{wanted}' instead of {key}=" in err
    assert not (tmp_path / "runs").exists() and not wanted.exists()


@pytest.mark.parametrize("value", ["", "null", "None"])
def test_an_empty_output_dir_on_the_command_line_names_a_placeholder(value, tiny_bert, intent_data, tmp_path,
                                                                     monkeypatch, capsys):
    """`tune ... output_dir=` said "give --study-dir '' instead of output_dir=" (shlex.quote('') is "''"), and
    `output_dir=null` "give --study-dir null" (a folder named null)."""
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "-q", "--budget", "2trials", "--data", str(intent_data), f"name_or_path={tiny_bert}",
                 f"output_dir={value}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "give --study-dir DIR instead of output_dir=" in err and "''" not in err


def test_an_output_dir_beside_a_study_dir_is_noted_not_refused(tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    """A train command line reused for tune with --study-dir given: its output_dir is not read, which a note says;
    no refusal (the study's folder is named). `output_dir=null` without --study-dir names no folder 'null'."""
    import importlib

    T = importlib.import_module("loratune.search.tune")

    def stopped(*a, **k):  # the study itself is not this test's: stopped as it would begin
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "tune", stopped)
    study = tmp_path / "s"
    rc = main(["tune", "-q", "--study-dir", str(study), "--data", str(intent_data), f"name_or_path={tiny_bert}",
               f"output_dir={tmp_path / 'x'}"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 130 and f"note: tune: output_dir={tmp_path / 'x'} is not read" in err
    monkeypatch.chdir(tmp_path)
    assert main(["tune", "-q", "--data", str(intent_data), f"name_or_path={tiny_bert}", "output_dir=null"]) == 2
    assert "give --study-dir DIR instead of output_dir=" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("target", ["-1", "0", "nan"])
def test_a_target_that_is_no_objective_value_is_refused_by_the_parser(target, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--study-dir", str(tmp_path / "s"), "--target", target])
    assert exc.value.code == 2 and "a macro-F1 in (0, 1] or a val loss above 0" in capsys.readouterr().err


def test_a_share_target_above_1_is_refused_before_the_study_is_made(tiny_bert, intent_data, tmp_path, capsys):
    """--target 1.5 was taken, and the LoRA-vs-full reasons read 'target not met' against it."""
    study = tmp_path / "s"
    assert main(_tune_args(tiny_bert, intent_data, study, "--target", "1.5", "--budget", "4trials")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--target 1.5: the objective (auto) is a share, in 0..1" in err and "--target 0.85 for 85%" in err
    assert not study.exists()


@pytest.mark.parametrize("extra", [(), ("--strategy", "random"), ("--arms", "dora,loraplus")])
def test_tune_with_method_full_is_refused_up_front(extra, tiny_bert, intent_data, tmp_path, capsys):
    """tune with adapter.method=full crashed (exit 2) after some trials on a config it made itself (phase 2's
    lora_alpha move, a DoRA arm), again on --resume, and at trial #0 with --strategy random."""
    study = tmp_path / "s"
    ov = overrides(tiny_bert, intent_data, study / "unused", method="full", num_threads=1)
    ov = [o for o in ov if not o.startswith(("max_steps=", "eval_steps=", "output_dir="))]
    args = ["tune", *ov, "--study-dir", str(study), "-q", "--budget", "4trials", "--trial-steps", "8", *extra]
    assert main(args) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "adapter.method: got 'full'; tune searches LoRA configs" in err
    assert "leave adapter.method at lora" in err and "loratune train adapter.method=full" in err
    assert "Traceback" not in err and not study.exists()


def test_an_old_study_with_a_full_base_prints_its_summary_when_finished_and_says_start_a_new_one(
        tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    """tune --resume of a study begun (before tune refused it) from a method=full base: a finished one exited 2
    instead of printing its summary, and the fix said "leave adapter.method at lora" of a method nobody typed."""
    import optuna
    import yaml

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "2trials", "--trial-steps", "8")) == 0
    o = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}")
    meta = dict(o.user_attrs["loratune"])
    base = yaml.safe_load(meta["base_config"])
    base["adapter"] = {"method": "full"}  # what an older loratune recorded of `tune method=full`
    o.set_user_attr("loratune", {**meta, "base_config": yaml.safe_dump(base)})
    summary = (study / "final" / "study.json").read_text()
    capsys.readouterr()
    assert main(["tune", "--resume", "--study-dir", str(study)]) == 0
    out = capsys.readouterr()
    assert "is finished: nothing to resume" in " ".join((out.out + out.err).split())
    assert (study / "final" / "study.json").read_text() == summary
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "3trials", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "was started (before tune refused it) from a base config with adapter.method=full" in err
    assert "start a new study (another --study-dir) from a config without adapter.method=full" in err
    assert "leave adapter.method at lora" not in err and "Traceback" not in err


def test_a_second_study_in_a_study_dir_is_refused_before_anything_is_written(tiny_bert, intent_data, tmp_path,
                                                                             monkeypatch, capsys):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "2trials", "--trial-steps", "8")) == 0
    first = sorted(p.read_text() for p in (study / "trials").glob("*/run.json"))
    trail = (study / "decisions.jsonl").read_text()
    capsys.readouterr()
    for _ in range(2):  # the message's fix is not "--resume" into the other study's trials
        rc = main(_tune_args(tiny_bert, intent_data, study, "--study-name", "other", "--budget", "2trials",
                             "--trial-steps", "8"))
        err = capsys.readouterr().err
        assert rc == 2 and "already holds study 'loratune'" in err, err
    import optuna

    assert [s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{study / 'study.db'}")] == ["loratune"]
    assert sorted(p.read_text() for p in (study / "trials").glob("*/run.json")) == first
    assert (study / "decisions.jsonl").read_text() == trail


def test_resume_with_a_larger_budget_keeps_one_trail_and_every_trial(tiny_bert, intent_data, tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    # 4 trials, then 6: a trial the first session trained is one the resumed session's trail no longer uses
    # (with 3 then 5 since lr-too-large's collapse route reads the tiny runs as learning, both sessions' trails use
    # the same trials and nothing below is exercised)
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "4trials", "--trial-steps", "8")) == 0
    finished = {t.user_attrs["key"] for t in _optuna_trials(study) if "record" in t.user_attrs}
    capsys.readouterr()
    # less, or another unit: what was spent stays spent
    for budget in ("2trials", "300000ex"):
        assert main(["tune", "--resume", "--study-dir", str(study), "--budget", budget, "-q"]) == 2
        assert "its budget can only grow" in capsys.readouterr().err
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "6trials", "-q"]) == 0
    decisions = [json.loads(x) for x in (study / "decisions.jsonl").read_text().splitlines()]
    assert [d["seq"] for d in decisions] == list(range(len(decisions))), "two decisions at one seq"
    assert sum(d["kind"] == "recommendation" for d in decisions) == 1
    # the earlier session's decisions the resumed one took otherwise (4 trials left no room for what 6 allow): kept,
    # marked, beside the trail
    superseded = study / "decisions.superseded.jsonl"
    old = [json.loads(x) for x in superseded.read_text().splitlines()]
    assert old and all("superseded_at" in d for d in old)
    summary = json.loads((study / "final" / "study.json").read_text())
    listed = {r["trial"] for r in summary["trials"]}
    now = {t.number: t.user_attrs["key"] for t in _optuna_trials(study) if "record" in t.user_attrs}
    assert finished <= set(now.values()) and set(now) <= listed  # no finished trial dropped from the summary
    superseded_rows = [r for r in summary["trials"] if r["status"] == "superseded"]
    assert superseded_rows  # a trial only a superseded decision used is listed as such, not dropped
    # a superseded trial trained: charged once, so the larger budget bounds every trial the study trained (the
    # resume charged only the ones it reused and trained more trials than its budget)
    charged = [c for c in summary["budget"]["ledger"] for r in superseded_rows
               if c["label"].startswith(f"#{r['trial']} ") and "not reused" in c["label"]]
    assert [c["cost"]["examples"] for c in charged] == [r["examples"] for r in superseded_rows]
    assert summary["budget"]["spent"]["trials"] == len(now) <= 6
    assert summary["budget"]["spent"]["examples"] == sum(r["examples"] for r in summary["trials"])


@pytest.mark.parametrize("flag, value", [("--trial-steps", "-5"), ("--trial-steps", "0"), ("--heartbeat", "0"),
                                         ("--heartbeat", "-1")])
def test_trial_steps_and_heartbeat_below_one_are_refused_by_name(flag, value, tmp_path, capsys):
    # 0 was silently read as "the default"; -5 was refused only after phase 0 had written the study
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--study-dir", str(tmp_path / "s"), flag, value])
    assert exit_.value.code == 2 and f"argument {flag}: a whole number >= 1" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("value", ["-1", "4294967296", "x"])
def test_a_sampler_seed_outside_the_samplers_range_is_refused_by_name(value, tmp_path, capsys):
    # -1 was a traceback from optuna's RandomSampler (exit 1) with study.db, decisions.jsonl and assess.json left
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--study-dir", str(tmp_path / "s"), "--strategy", "random", "--seed", value])
    assert exit_.value.code == 2 and "argument --seed: a whole number from 0 to 4294967295" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_python_callers_sampler_seed_is_checked_before_the_study_is_made(tmp_path):
    from loratune.errors import UserError
    from loratune.search.tune import TuneOptions, tune

    with pytest.raises(UserError, match=re.escape("seed (--seed): a whole number from 0 to 4294967295, not -1")):
        tune(load_config(None, []), TuneOptions(study_dir=str(tmp_path / "s"), strategy="random", seed=-1))
    assert not (tmp_path / "s").exists()


def test_a_study_dir_that_is_a_file_is_named_as_the_study_dir(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("hi")
    assert main(["tune", "--study-dir", str(f), "--budget", "1trials"]) == 2
    assert "--study-dir '" in capsys.readouterr().err


def test_a_study_resumes_from_another_working_directory_and_after_a_move(tiny_bert, intent_data, tmp_path,
                                                                         monkeypatch):
    # trial run_dirs were recorded relative to the first session's working directory: a resume from anywhere else
    # trained a trial, then failed to find the pick ("run directory 'st/trials/02-...' does not exist"), left final/
    # stale and the trail without its finish
    import shutil

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    args = _tune_args(tiny_bert, intent_data, Path("st"), "--strategy", "random", "--budget", "2trials",
                      "--trial-steps", "8")
    assert main(args) == 0
    monkeypatch.chdir(tmp_path / "b")
    study = tmp_path / "a" / "st"
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "3trials", "-q"]) == 0
    summary = json.loads((study / "final" / "study.json").read_text())
    assert summary["budget"]["spent"]["trials"] == 3 and len(summary["trials"]) == 3
    assert all(Path(r["run_dir"]).is_dir() and Path(r["run_dir"]).is_relative_to(study) for r in summary["trials"])
    assert json.loads((study / "decisions.jsonl").read_text().splitlines()[-1])["kind"] != "pick"
    # moved: its own trials are read, never the old place's
    moved = tmp_path / "moved"
    shutil.move(str(study), moved)
    assert main(["tune", "--resume", "--study-dir", str(moved), "--budget", "4trials", "-q"]) == 0
    summary = json.loads((moved / "final" / "study.json").read_text())
    assert summary["budget"]["spent"]["trials"] == 4
    assert all(Path(r["run_dir"]).is_relative_to(moved) for r in summary["trials"])
    assert summary["recommendation"]["run_dir"].startswith(str(moved))


def test_a_finished_study_moved_or_copied_resumes_with_its_own_folders(tiny_bert, intent_data, tmp_path, monkeypatch,
                                                                        capsys):
    # a finished study's resume returned (and printed) its stored summary as written: a moved study named the
    # recommendation's adapter at the old place (gone), a copy the original's; `loratune show` read them here already
    import shutil

    from loratune import api

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert main(_tune_args(tiny_bert, intent_data, Path("s1"), "--strategy", "random", "--budget", "2trials",
                           "--trial-steps", "8")) == 0
    shutil.copytree("s1", "copy")  # the original stays: a copy read it, alive
    shutil.move("s1", "s2")
    for study in (Path("s2"), Path("copy")):
        capsys.readouterr()
        assert main(["tune", "--resume", "--study-dir", str(study), "-q"]) == 0
        out = capsys.readouterr().out
        assert f"adapter: {study / 'final' / 'adapter'}" in out and "s1" not in out
        summary = api.tune(api.load_config(None, []), resume=True, study_dir=study)
        rec = summary["recommendation"]
        assert rec["files"] == {k: str(study / "final" / name) for k, name in
                                (("adapter", "adapter"), ("config", "config.yaml"), ("test", "test.json"))}
        assert all(Path(v).exists() for v in rec["files"].values())
        assert summary["study_dir"] == str(study) and str(tmp_path / study / "study.db") in summary["storage"]
        runs = [rec["run_dir"], *(t["run_dir"] for t in summary["trials"])]
        assert len(runs) == 3 and all(Path(r).is_dir() and Path(r).is_relative_to(tmp_path / study) for r in runs)


def test_a_resume_never_lowers_what_the_study_spent(tiny_bert, intent_data, tmp_path, monkeypatch):
    # a resume's meter starts empty and charges the reused trials' own training only: the earlier sessions' startup
    # and the time between and around their trials must be charged again (kept in the study as they are charged, so
    # a killed session's stay spent too)
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "2trials", "--trial-steps", "4")) == 0
    first = json.loads((study / "final" / "study.json").read_text())["budget"]
    overheads = [c for c in first["ledger"] if c["label"].startswith(("startup", "between", "after the last"))
                 or "outside its training" in c["label"]]
    assert any(c["label"] == "startup (this session)" for c in overheads)

    _unfinish(study)  # as a session killed before its finish leaves it (a finished study's resume changes nothing)
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "2trials", "-q"]) == 0
    second = json.loads((study / "final" / "study.json").read_text())["budget"]
    assert second["spent"]["wall_s"] >= first["spent"]["wall_s"]
    carried = [(c["label"], c["cost"]["wall_s"]) for c in second["ledger"] if c["label"].startswith("session 1: ")]
    # each earlier overhead charged again, once, as it was charged
    assert [label for label, _ in carried] == [f"session 1: {c['label']}" for c in overheads]
    assert [w for _, w in carried] == pytest.approx([c["cost"]["wall_s"] for c in overheads], abs=2e-3)
    assert second["spent"]["wall_s"] == pytest.approx(sum(c["cost"]["wall_s"] for c in second["ledger"]), abs=0.05)
    # kept in the study session by session as charged (what a resume after a kill reads)
    import optuna

    from loratune.search.study import OVERHEADS

    attrs = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}").user_attrs
    assert [e["label"] for e in attrs[OVERHEADS][0]] == [c["label"] for c in overheads]
    assert len(attrs[OVERHEADS]) == 2 and any(e["label"] == "startup (this session)" for e in attrs[OVERHEADS][1])


def test_a_resume_of_a_study_made_before_overheads_were_kept_never_lowers_what_it_spent(
        tiny_bert, intent_data, tmp_path, monkeypatch):
    # a study made by a version that kept no overheads per session: its last summary's spend is the floor (a resume
    # of one went 7.26 s -> 6.60 s spent)
    import optuna

    from loratune.search.study import OVERHEADS

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "2trials", "--trial-steps", "4")) == 0
    first = json.loads((study / "final" / "study.json").read_text())["budget"]
    stored = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}")
    stored.set_user_attr(OVERHEADS, [])  # as the older version left it
    _unfinish(study)
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "2trials", "-q"]) == 0
    second = json.loads((study / "final" / "study.json").read_text())["budget"]
    assert second["spent"]["wall_s"] >= first["spent"]["wall_s"]
    top_up = [c for c in second["ledger"] if c["label"].startswith("earlier sessions' time around their trials")]
    assert len(top_up) == 1 and top_up[0]["cost"]["wall_s"] > 0
    assert not any(c["label"].startswith("session 1: ") for c in second["ledger"])
    # the top-up is kept with that session's overheads: a further resume charges it again, as it charges them
    _unfinish(study)
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "2trials", "-q"]) == 0
    third = json.loads((study / "final" / "study.json").read_text())["budget"]
    assert third["spent"]["wall_s"] >= second["spent"]["wall_s"]
    assert any(c["label"].startswith("session 1: earlier sessions' time around") for c in third["ledger"])


def _unfinish(study: Path) -> None:
    """Mark a study as not finished, as a session killed before its finish leaves it."""
    import optuna

    stored = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}")
    stored.set_user_attr("loratune", {**stored.user_attrs["loratune"], "finished": False})


def test_a_resume_of_a_finished_study_says_so_and_changes_nothing(tiny_bert, intent_data, tmp_path, monkeypatch,
                                                                   capsys):
    """A resume of a finished study appended study-resumed "the lost trials' points are trained again" though none
    was lost, and rewrote final/study.json's spent.wall_s and the first session's startup ledger entry."""
    import optuna

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "2trials", "--trial-steps", "4")) == 0
    before = {p: (study / p).read_bytes() for p in ("final/study.json", "decisions.jsonl")}
    overheads = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}").user_attrs
    capsys.readouterr()
    assert main(["tune", "--resume", "--study-dir", str(study), "-q"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "is finished: nothing to resume" in out and "recommendation:" in out
    assert {p: (study / p).read_bytes() for p in before} == before
    after = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}").user_attrs
    overheads.pop("leader"), after.pop("leader")  # the lease a session takes and releases
    assert after == overheads  # the sessions' overheads, the meta (finished) as they were


def test_a_refused_or_respelled_resume_of_a_finished_study_leaves_it_finished(tiny_bert, intent_data, tmp_path,
                                                                              monkeypatch, capsys):
    """A refused --resume (a changed --thresholds: exit 2) cleared the study's finished flag at open, so the next
    plain --resume reran its finish (spend and ledger rewritten, study-resumed appended); the same budget spelled
    differently ("2 trials" for "2trials") bypassed the no-op guard; the no-op printed the last session's time as
    this session's."""
    import optuna

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "2trials", "--trial-steps", "4")) == 0
    summary = json.loads((study / "final" / "study.json").read_text())
    summary["wall_s_session"] = 999.0  # a last session far longer than a no-op could take
    (study / "final" / "study.json").write_text(json.dumps(summary))
    before = {p: (study / p).read_bytes() for p in ("final/study.json", "decisions.jsonl")}
    attrs = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}").user_attrs
    th = tmp_path / "th.json"
    th.write_text('{"binding_ratio_min": 3.0}')
    assert main(["tune", "--resume", "--study-dir", str(study), "--thresholds", str(th), "-q"]) == 2
    stored = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}").user_attrs
    assert stored["loratune"]["finished"] is True
    capsys.readouterr()
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "2 trials", "-q"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "is finished: nothing to resume" in out
    said = re.search(r"this session (\d+)s", out)  # the no-op's own few seconds (a loaded machine takes more than 0.5)
    assert "this session 999s" not in out and said and int(said.group(1)) < 60
    assert {p: (study / p).read_bytes() for p in before} == before
    after = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}").user_attrs
    attrs.pop("leader"), after.pop("leader")
    assert after == attrs  # the meta (finished, the budget's text) as it was


def test_a_resume_notes_a_validation_split_other_than_the_studys(tiny_bert, intent_data, tmp_path, monkeypatch,
                                                                 capsys):
    # a study begun before the carving changed (7baf8a1) resumed on the new carving: its trials' scores mixed two
    # validation splits, and nothing said so
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text((intent_data / "train.jsonl").read_text())  # validation carved from train
    study = tmp_path / "st"
    assert main(_tune_args(tiny_bert, data, study, "--strategy", "random", "--budget", "1trials",
                           "--trial-steps", "4")) == 0
    assert "different validation split" not in capsys.readouterr().out
    lines = (data / "train.jsonl").read_text().splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join(lines[1:] + lines[:1]))  # the same rows, another carving
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "2trials", "-q"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("note: this session validates on a different validation split than the study's earlier trials (4 rows "
            "then, 4 now, other rows or labels): their scores and this session's are not comparable") in out, out


def test_a_resume_on_other_training_data_is_refused_and_an_older_study_is_told_it_cannot_be_checked(
        tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    # the train file grew (48 -> 120 rows in the report) and --resume went on without a word: the study compared, and
    # measured seed noise across, trials trained on two different training sets
    import optuna

    TRAINED_ON = "trained_on"  # (data.TRAINED_ON)
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    lines = (intent_data / "train.jsonl").read_text().splitlines(keepends=True)
    (data / "train.jsonl").write_text("".join(lines))  # validation carved from train
    study = tmp_path / "st"
    assert main(_tune_args(tiny_bert, data, study, "--strategy", "random", "--budget", "1trials",
                           "--trial-steps", "4")) == 0
    db = f"sqlite:///{study / 'study.db'}"
    meta = optuna.load_study(study_name="loratune", storage=db).user_attrs["loratune"]
    capsys.readouterr()
    (data / "train.jsonl").write_text("".join(lines + lines[:12]))  # 12 rows more
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "2trials", "-q"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    rows = 48 - meta["validated_on"]["rows"]  # train's rows, the carved validation split aside
    assert meta[TRAINED_ON]["rows"] == rows
    assert (f"the study in {study} trained its trials on other training data than this session reads ({rows} rows "
            "then, ") in err
    assert "the seed noise its replicates measure, would mix runs trained on two different training sets" in err
    assert "start a new study on this data (another --study-dir)" in err and "Traceback" not in err
    after = optuna.load_study(study_name="loratune", storage=db)
    assert after.user_attrs["loratune"]["finished"] is True and len(after.trials) == 1  # left as it was
    # the same rows shuffled carve another validation split (a note), and are the same training data
    (data / "train.jsonl").write_text("".join(lines[1:] + lines[:1]))
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "2trials", "-q"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "different validation split" in out and "cannot be checked" not in out
    # a study begun before the record: resumed, and told
    older = optuna.load_study(study_name="loratune", storage=db)
    older.set_user_attr("loratune", {k: v for k, v in older.user_attrs["loratune"].items() if k != TRAINED_ON})
    (data / "train.jsonl").write_text("".join(lines + lines[:12]))
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "3trials", "-q"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (f"note: the study in {study} began before loratune recorded its training data: whether this session "
            "trains on the same train split as its earlier trials cannot be checked") in out
    assert TRAINED_ON not in optuna.load_study(study_name="loratune", storage=db).user_attrs["loratune"]


def _one_lr_dim(monkeypatch, lrs):
    """tune's search space cut to one knob: the lr, one of `lrs`."""
    import loratune.search.space as space

    monkeypatch.setattr(space, "default_space", lambda *a, **k: space.SearchSpace(
        (space.Dim("train.learning_rate", "optimization", "choice", tuple(lrs)),)))


def test_a_drawn_point_the_config_refuses_fails_that_trial_and_the_study_finishes(tiny_bert, intent_data, tmp_path,
                                                                                   monkeypatch):
    from loratune.config import key_table

    limit = key_table()["train.learning_rate"].metadata["max"]
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    _one_lr_dim(monkeypatch, (limit * 2, 2e-2))  # a point past the config's lr limit, then one it allows
    study = tmp_path / "random"
    assert main(_tune_args(tiny_bert, intent_data, study, "--strategy", "random", "--budget", "4trials",
                           "--trial-steps", "8")) == 0
    summary = json.loads((study / "final" / "study.json").read_text())
    lrs = [t.params["train.learning_rate"] for t in _optuna_trials(study)]
    assert set(lrs) == {limit * 2, 2e-2} and len(lrs) == 4  # the refused draw did not stop the study
    refused = [t for t in summary["trials"] if t["status"] == "failed"]
    assert len(refused) == lrs.count(limit * 2) >= 1
    assert refused[0]["reason"] == (f"the trial's config was refused: train.learning_rate: got {limit * 2!r}; "
                                    f"allowed: a number > 0.0 and <= {limit!r}")
    run = json.loads(next((study / "trials").glob(f"{lrs.index(limit * 2):02d}-*/run.json")).read_text())
    assert run == {"status": "failed", "reason": refused[0]["reason"]}
    assert summary["recommendation"]["point"]["train.learning_rate"] == 2e-2
    assert (study / "final" / "adapter").is_dir()


def test_a_study_whose_every_trial_is_refused_says_why_nothing_is_recommended(tiny_bert, intent_data, tmp_path,
                                                                              monkeypatch, capsys):
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    _one_lr_dim(monkeypatch, (2.0, 3.0))  # both past the config's lr limit
    assert main(_tune_args(tiny_bert, intent_data, tmp_path / "s", "--strategy", "random", "--budget", "2trials",
                           "--trial-steps", "8")) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "no recommendation: no trial finished with a score; the trials failed with: the trial's config was " \
           "refused: train.learning_rate: got" in out


def test_a_grid_study_ends_when_its_grid_is_walked_before_the_budget(tiny_bert, intent_data, tmp_path, monkeypatch):
    # optuna's GridSampler calls study.stop() from after_trial once the last grid point is told, which raises
    # outside Study.optimize (loratune asks and tells itself): the study crashed on its last grid point with
    # "RuntimeError: Study.stop is supposed to be invoked inside an objective function or a callback"
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    _one_lr_dim(monkeypatch, (5e-3, 2e-2))  # a grid of 2 points under a budget of 4 trials
    study = tmp_path / "grid"
    assert main(_tune_args(tiny_bert, intent_data, study, "--strategy", "grid", "--budget", "4trials",
                           "--trial-steps", "8")) == 0
    lrs = sorted(t.params["train.learning_rate"] for t in _optuna_trials(study))
    assert lrs == [5e-3, 2e-2]  # each grid point once, then the study stopped on the walked grid
    decisions = [json.loads(line) for line in (study / "decisions.jsonl").read_text().splitlines()]
    assert any(d.get("because") == "grid exhausted" or "grid exhausted" in json.dumps(d) for d in decisions)
    assert (study / "final" / "adapter").is_dir()


def test_a_resume_searches_the_studys_own_space_when_todays_rules_give_another(tiny_bert, intent_data, tmp_path,
                                                                              monkeypatch, capsys):
    """A random study made by an older version (its capacity ceiling gave adapter.r [2, 4, 8], today's rules [2, 4])
    recomputed its space on --resume: Optuna refused the first draw ("CategoricalDistribution does not support dynamic
    value space", a traceback), leaving a RUNNING trial and the trail moved to decisions.superseded.jsonl."""
    import optuna

    import loratune.search.space as space

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    _one_lr_dim(monkeypatch, (5e-3, 2e-2))  # the space the study began with
    study = tmp_path / "random"
    assert main(_tune_args(tiny_bert, intent_data, study, "--strategy", "random", "--budget", "2trials",
                           "--trial-steps", "4")) == 0
    stored = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}")
    meta = dict(stored.user_attrs["loratune"])
    meta.pop("space", None)  # as a version that kept the space in the trail alone left it
    stored.set_user_attr("loratune", {**meta, "finished": False})
    trail = (study / "decisions.jsonl").read_text()
    states = [t.state.name for t in _optuna_trials(study)]
    _one_lr_dim(monkeypatch, (1e-2, 3e-2))  # today's rules compute another space

    monkeypatch.setattr(space, "study_space", lambda *a, **k: (_ for _ in ()).throw(ValueError("adapter.r: no")),
                        raising=False)
    capsys.readouterr()
    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "3trials", "-q"]) == 2
    assert "cannot be continued by this loratune version: adapter.r: no" in capsys.readouterr().err
    # refused before anything was written: the trail as it was, nothing superseded, no trial begun
    assert (study / "decisions.jsonl").read_text() == trail and not (study / "decisions.superseded.jsonl").exists()
    assert [t.state.name for t in _optuna_trials(study)] == states and len(states) == 2
    after = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}").user_attrs["loratune"]
    assert after["budget"] == meta["budget"] == "2trials"  # the refused session's --budget 3trials not recorded
    monkeypatch.undo()
    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    _one_lr_dim(monkeypatch, (1e-2, 3e-2))

    assert main(["tune", "--resume", "--study-dir", str(study), "--budget", "3trials", "-q"]) == 0
    trials = _optuna_trials(study)
    assert len(trials) == 3 and "RUNNING" not in {t.state.name for t in trials}
    assert {t.params["train.learning_rate"] for t in trials} <= {5e-3, 2e-2}  # drawn from the study's own space
    kept = optuna.load_study(study_name="loratune", storage=f"sqlite:///{study / 'study.db'}").user_attrs["loratune"]
    assert [d["choices"] for d in kept["space"]["dims"]] == [[5e-3, 2e-2]]  # kept for the next resume
    said = [json.loads(x) for x in (study / "decisions.jsonl").read_text().splitlines() if '"space"' in x]
    assert [d["data"]["dims"][0]["choices"] for d in said if d["kind"] == "space"] == [[5e-3, 2e-2]]


def test_a_resume_of_a_finished_study_reads_its_summary_as_utf8_whatever_the_locale(tiny_bert, intent_data, tmp_path,
                                                                                    monkeypatch, capsys):
    """tune --resume of a finished study read final/study.json (written as UTF-8) in the locale's encoding: under
    a non-UTF-8 locale (LC_ALL=C without UTF-8 mode: ASCII) a study whose summary holds a non-ASCII character (its
    folder's name here) ended with a UnicodeDecodeError traceback. Every file loratune wrote is read as UTF-8."""
    from pathlib import Path as P

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "étude"
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "2trials", "--trial-steps", "4")) == 0
    assert not (study / "final" / "study.json").read_bytes().isascii()
    read_text = P.read_text

    def in_ascii_locale(self, encoding=None, errors=None):  # what a read without encoding= gets under LC_ALL=C
        return read_text(self, encoding=encoding or "ascii", errors=errors)

    monkeypatch.setattr(P, "read_text", in_ascii_locale)
    capsys.readouterr()
    assert main(["tune", "--resume", "--study-dir", str(study), "-q"]) == 0
    assert "is finished: nothing to resume" in " ".join(capsys.readouterr().out.split())


def test_the_trials_tables_keep_each_verdict_and_status_whole_at_80_columns(tiny_bert, intent_data, tmp_path,
                                                                           monkeypatch):
    """tune's trials table and `show STUDY`'s cut the verdict at 80 columns (a file, a CI log): lr-too-large and
    lr-too-small both read 'lr-too…' ('lr-too-l…' in show), the status 'compl…'. Both are whole now; the other
    columns fold."""
    import dataclasses
    import io

    from rich.console import Console

    from loratune.commands.tune import print_summary
    from loratune.report import build_report
    from loratune.report.study import show_study

    monkeypatch.setenv("LORATUNE_CACHE_DIR", str(tmp_path / "cache"))
    study = tmp_path / "study"
    assert main(_tune_args(tiny_bert, intent_data, study, "--budget", "2trials", "--trial-steps", "4")) == 0
    verdicts = ["lr-too-large", "lr-too-small"]
    s = json.loads((study / "final" / "study.json").read_text(encoding="utf-8"))
    s["trials"] = [{**t, "verdict": v} for t, v in zip(s["trials"], verdicts)]
    tune_out, show_out = io.StringIO(), io.StringIO()
    print_summary(Console(file=tune_out, width=80), s)
    r = build_report(study)
    r = dataclasses.replace(r, trials=tuple(dataclasses.replace(t, verdict=v) for t, v in zip(r.trials, verdicts)))
    show_study(Console(file=show_out, width=80), r)
    tables = [tune_out.getvalue().split("recommendation:")[0],
              show_out.getvalue().split("\ntrials ")[1].split("\nrank vs")[0]]
    for table in tables:
        assert all(table.count(v) == 1 for v in verdicts), table
        assert table.count("completed") == 2 and "…" not in table, table
