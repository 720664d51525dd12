"""Faults around `loratune tune`: SIGTERM mid-trial, a study.db from an older loratune/Optuna, a study
whose stored settings come from another loratune version. (kill -9 mid-trial and resume:
tests/integration/test_tune.py; two processes on one study and dead workers: test_workers.py.)"""

from __future__ import annotations

import json
import signal
import sqlite3

import pytest

from loratune.cli import main
from loratune.store import RunStore

from support_faults import Proc, history_lines
from support import flat, overrides


def test_sigterm_mid_trial_stops_tune_cleanly(tiny_bert, intent_data, tmp_path):
    study = tmp_path / "study"
    ov = [o for o in overrides(tiny_bert, intent_data, tmp_path / "unused", learning_rate=2e-2, num_threads=1)
          if not o.startswith(("max_steps=", "eval_steps=", "output_dir="))]
    proc = Proc(["tune", *ov, "--study-dir", str(study), "-q", "--budget", "4trials", "--trial-steps", "400"],
                tmp_path, env={"LORATUNE_CACHE_DIR": str(tmp_path / "cache")})

    def mid_trial():
        dirs = sorted((study / "trials").glob("*")) if (study / "trials").exists() else []
        return bool(dirs) and history_lines(dirs[0]) >= 2

    assert proc.wait_for(mid_trial, timeout=180), proc.stderr
    proc.signal(signal.SIGTERM)
    assert proc.finish() == 143
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "stopped by SIGTERM" in proc.stdout and "--resume" in proc.stdout
    trial_dir = sorted((study / "trials").glob("*"))[0]
    run = RunStore(trial_dir).read_run()
    assert run["status"] == "interrupted" and "SIGTERM" in run["reason"] and run["partial"] is True
    assert not (study / "study.lock").exists()  # released on the way out
    # the study can be resumed at once (no lease or lock left behind)
    from loratune.search.study import Study

    resumed = Study.open(study, resume=True)
    try:  # what the interrupted trial trained is charged to the resumed study's budget
        lost = resumed.lost_spending()
    finally:
        resumed.close()
    assert [(x["status"], x["examples"]) for x in lost] == [("interrupted", run["examples_seen"])]
    assert run["examples_seen"] > 0 and lost[0]["wall_s"] == pytest.approx(run["wall_s"]) and run["wall_s"] > 0


def test_a_trial_failed_by_the_users_input_stops_tune_with_the_error_not_an_lr_move(tiny_bert, intent_data, tmp_path,
                                                                                    capsys):
    """A setting every trial refuses (metric_for_best_model naming a metric single-label data does not compute; a model
    that cannot load did the same before a classifier head of another label count was replaced) failed every trial:
    tune read it as an lr problem ("a larger lr can only be worse", then "every grid point failed: lr /10"), exited
    1, and the error was only in final/study.json. Since tune runs train's checks (checks.run_checks) before its study
    is opened, the setting is refused before anything is written: no study folder, no trial."""
    study = tmp_path / "study"
    ov = [o for o in overrides(str(tiny_bert), intent_data, tmp_path / "unused", num_threads=1)
          if not o.startswith(("max_steps=", "eval_steps=", "output_dir="))]
    rc = main(["tune", *ov, "metric_for_best_model=subset_accuracy", "--study-dir", str(study), "-q", "--budget",
               "4trials", "--trial-steps", "12"])
    cap = capsys.readouterr()
    shown = flat(cap.out + cap.err)
    assert rc == 2, shown
    assert "subset_accuracy is not computed for single-label data" in shown and "Traceback" not in shown
    assert "lr /10" not in shown and "learning_rate" not in shown.split("subset_accuracy")[0]  # no lr move
    assert not study.exists()  # refused before the study was opened: no trial trained, no record to read as lr


def test_a_study_db_from_an_older_optuna_is_a_clear_message(tmp_path, capsys):
    from loratune.search.study import Study

    Study.open(tmp_path / "s", meta={"strategy": "protocol"}).close()
    db = sqlite3.connect(tmp_path / "s" / "study.db")
    db.execute("UPDATE alembic_version SET version_num = 'v2.6.0.a'")  # a schema from an older release
    db.commit()
    db.close()
    assert main(["tune", "--resume", "--study-dir", str(tmp_path / "s")]) == 2
    err = flat(capsys.readouterr().err)
    assert "another Optuna version" in err and "optuna storage upgrade" in err and "Traceback" not in err


def test_stored_settings_from_another_version_are_read(tmp_path):
    from loratune.search.protocol import ProtocolSettings
    from loratune.search.tune import settings_from

    notes = []

    class UI:
        def note(self, text):
            notes.append(text)

    stored = {**json.loads(json.dumps(ProtocolSettings().to_dict())), "knob_of_the_past": 3}
    stored.pop(next(iter(stored)))  # a key this version added since
    got = settings_from(stored, ProtocolSettings(), UI())
    assert isinstance(got, ProtocolSettings) and "knob_of_the_past" in notes[0]


def test_a_study_stopped_before_its_settings_were_stored_is_not_resumed_as_another(tmp_path, capsys):
    """SIGTERM between creating the study and storing its settings: --resume ran a 15-minute study of the embedded
    default instead of the user's model and data."""
    import optuna

    from loratune.search.study import Study

    Study.open(tmp_path / "s", meta={"strategy": "protocol", "base_config": "x: 1"}).close()
    assert optuna.load_study(study_name="loratune", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}") \
        .user_attrs["loratune"]["base_config"] == "x: 1"  # written with the study, in one step
    optuna.create_study(study_name="loratune", storage=f"sqlite:///{tmp_path / 'bare' / 'study.db'}"
                        if (tmp_path / "bare").mkdir() is None else None)  # what the signal left: no settings
    assert main(["tune", "--resume", "--study-dir", str(tmp_path / "bare")]) == 2
    err = flat(capsys.readouterr().err)
    assert "stopped before its settings were stored" in err and not (tmp_path / "bare" / "study.lock").exists()


def test_a_full_disk_or_a_size_limit_mid_study_is_an_output_fault(tmp_path, monkeypatch):
    """`database or disk is full` from SQLite (wrapped by SQLAlchemy and Optuna) ended `tune` in three tracebacks;
    a file-size limit was said as 'check the URL, the server and the credentials'."""
    import errno
    import sqlite3

    import optuna

    from loratune.errors import UserError
    from loratune.search.study import Study, storage_error
    from loratune.train import output_error

    study = Study.open(tmp_path / "s", meta={"strategy": "random"})
    storage = study.optuna._storage

    def full(*args, **kwargs):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError as cause:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit") from cause

    monkeypatch.setattr(storage._backend, "set_study_user_attr", full)  # the RDB storage under the cache
    with pytest.raises(UserError, match="the disk holding the study is full") as info:
        study.set_meta(finished=True)
    assert "--resume" in info.value.fix
    monkeypatch.undo()
    study.close()
    assert "file-size limit" in storage_error("sqlite:///x.db", OSError(errno.EFBIG, "File too large")).problem
    assert "reached the largest size allowed" in output_error(OSError(errno.EFBIG, "File too large"), "out").problem


def test_the_refusals_of_a_taken_study_name_and_a_missing_worker_storage_give_advice_that_works(tmp_path, capsys,
                                                                                                 monkeypatch):
    from loratune.errors import UserError
    from loratune.search.study import Study

    Study.open(tmp_path / "s", meta={"strategy": "random"}).close()
    # the study dir's own study.db holds one study: "another --study-name" there is refused too, so not advised
    with pytest.raises(UserError) as got:
        Study.open(tmp_path / "s", meta={})
    assert "already exists" in got.value.problem and got.value.fix.endswith("choose another --study-dir (study_dir=)"), got.value
    with pytest.raises(UserError) as got:  # another storage holds many studies: another name works there
        Study.open(tmp_path / "t", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}", meta={})
    assert got.value.fix.endswith("--study-dir (study_dir=) / --study-name (study_name=)")
    # a worker given only --storage is told about that storage, not about the default runs/tune it never named
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'nonexist' / 'study.db'}"
    assert main(["tune", "--worker", "--storage", url]) == 2
    err = flat(capsys.readouterr().err)
    assert f"no study in --storage '{url}' to work on" in err and "runs/tune" not in err, err


@pytest.mark.parametrize("extra, named", [
    (["--seed", "7"], "--seed 3"),
    (["--trial-steps", "24"], "--trial-steps 8"),
    (["per_device_train_batch_size=4"], "per_device_train_batch_size=8"),
    (["--target", "0.9"], "no --target"),
    (["--seed", "3", "--trial-steps", "8", "per_device_train_batch_size=8"], None),  # the study's own: accepted
    (["--data", "/d/other"], "dataset_name=/d/intent"),  # --data was not compared: the study's data trained on
    (["--data", "/d/intent"], None),
])
def test_a_resume_refuses_options_that_differ_from_the_studys_own(extra, named, tmp_path, capsys, monkeypatch):
    # --resume silently replaced them with the study's (a new --seed, --trial-steps or batch size trained as before)
    from loratune.config import load_config, to_yaml
    from loratune.search.protocol import ProtocolSettings
    from loratune.search.study import Study

    base = load_config(None, ["per_device_train_batch_size=8", "dataset_name=/d/intent"])
    Study.open(tmp_path / "s", meta={"strategy": "random", "seed": 3, "budget": "2trials", "base_config": to_yaml(base),
                                     "settings": ProtocolSettings().to_dict(),
                                     "plan": {"max_steps": 8, "examples": 64}}).close()
    import sys

    import loratune.search.tune  # noqa: F401 (the package's `tune` is the function)

    tune_mod = sys.modules["loratune.search.tune"]

    def stop(*a, **k):
        raise RuntimeError("got past the checks")

    monkeypatch.setattr(tune_mod, "Budget", type("B", (), {"parse": staticmethod(stop)}))
    args = ["tune", "--resume", "--study-dir", str(tmp_path / "s"), "-q", *extra]
    if named is None:
        with pytest.raises(RuntimeError, match="got past the checks"):
            main(args)
        return
    assert main(args) == 2
    err = flat(capsys.readouterr().err)
    assert f"was set up with {named}: a resume continues it as it was" in err and "Traceback" not in err, err


@pytest.mark.parametrize("keys, named", [
    (["per_device_train_batch_size=8", "dataset_name=/d/other"], "dataset_name=/d/intent"),
    (["dataset_name=/d/intent", "r=16"], "r=8"),
    (["per_device_train_batch_size=8", "dataset_name=/d/intent"], None),  # the study's own
    ([], None),  # nothing set: the study's config, as `tune --resume` alone
])
def test_api_tune_resume_refuses_a_cfg_that_differs_from_the_studys_as_the_cli_does(keys, named, tmp_path, capsys,
                                                                                     monkeypatch):
    # api.tune compared only the keys named in fixed= (none by default): a cfg with other data resumed on the study's
    # data without a word, where `tune --resume --data X` is refused
    from loratune import api
    from loratune.config import load_config, to_yaml
    from loratune.errors import UserError
    from loratune.search.protocol import ProtocolSettings
    from loratune.search.study import Study

    base = load_config(None, ["per_device_train_batch_size=8", "dataset_name=/d/intent"])
    Study.open(tmp_path / "s", meta={"strategy": "random", "seed": 3, "budget": "2trials", "base_config": to_yaml(base),
                                     "settings": ProtocolSettings().to_dict(),
                                     "plan": {"max_steps": 8, "examples": 64}}).close()
    import sys

    import loratune.search.tune  # noqa: F401 (the package's `tune` is the function)

    def stop(*a, **k):
        raise RuntimeError("got past the checks")

    monkeypatch.setattr(sys.modules["loratune.search.tune"], "Budget", type("B", (), {"parse": staticmethod(stop)}))
    cfg = load_config(None, keys)
    if named is None:
        with pytest.raises(RuntimeError, match="got past the checks"):
            api.tune(cfg, resume=True, study_dir=tmp_path / "s")
        return
    with pytest.raises(UserError) as exc:
        api.tune(cfg, resume=True, study_dir=tmp_path / "s")
    said = f"the study in {tmp_path / 's'} was set up with {named}: a resume continues it as it was"
    assert flat(str(exc.value)).startswith(said)
    assert main(["tune", "--resume", "--study-dir", str(tmp_path / "s"), "-q", *keys]) == 2
    assert flat(capsys.readouterr().err).endswith(flat(str(exc.value)))  # the CLI's words


def test_a_resume_refuses_a_dataset_prepared_from_other_data_than_the_studys(tiny_bert, intent_data, tmp_path,
                                                                             monkeypatch):
    # the dataset a caller passed was kept (`dataset or recipe(...)`) after cfg became the study's: the resumed trials
    # trained on it (2 labels, 24 rows) while their config.yaml and run.json named the study's data (4 labels)
    import sys

    from loratune import api
    from loratune.config import to_yaml
    from loratune.errors import UserError
    from loratune.search.protocol import ProtocolSettings
    from loratune.search.study import Study
    from loratune.search.tune import TuneOptions, tune

    from support import make_rows, write_jsonl

    other = tmp_path / "other"
    other.mkdir()
    for split, n, seed in (("train", 12, 11), ("validation", 5, 12), ("test", 5, 13)):
        write_jsonl(other / f"{split}.jsonl", make_rows(n, seed, ["card_lost", "balance"]))
    study_cfg = api.load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run"))
    other_cfg = api.load_config(None, overrides(tiny_bert, other, tmp_path / "run"))
    Study.open(tmp_path / "s", meta={"strategy": "random", "seed": 0, "budget": "2trials",
                                     "base_config": to_yaml(study_cfg), "settings": ProtocolSettings().to_dict(),
                                     "plan": {"max_steps": 8, "examples": 64}}).close()
    import loratune.search.tune  # noqa: F401 (the package's `tune` is the function)

    def stop(*a, **k):
        raise RuntimeError("got past the checks")

    monkeypatch.setattr(sys.modules["loratune.search.tune"], "Budget", type("B", (), {"parse": staticmethod(stop)}))
    said = (f"the study in {tmp_path / 's'} was set up with dataset_name={intent_data}: a resume continues it as it "
            "was (its plan, trials and decisions), so a different value would be ignored")
    resume = TuneOptions(resume=True, study_dir=str(tmp_path / "s"))
    for call in (lambda: tune(study_cfg, resume, dataset=api.prepare(other_cfg)),  # the study's cfg, other data
                 lambda: api.tune(other_cfg, dataset=api.prepare(other_cfg), resume=True, study_dir=tmp_path / "s")):
        with pytest.raises(UserError) as exc:
            call()
        assert flat(str(exc.value)).startswith(said)
    with pytest.raises(RuntimeError, match="got past the checks"):  # the study's own data goes on
        api.tune(study_cfg, dataset=api.prepare(study_cfg), resume=True, study_dir=tmp_path / "s")


def test_a_worker_refuses_a_seed_and_trial_steps_it_would_ignore(tmp_path, capsys):
    assert main(["tune", "--worker", "--study-dir", str(tmp_path / "s"), "--seed", "3", "--trial-steps", "5"]) == 2
    err = flat(capsys.readouterr().err)
    assert "(given: --seed, --trial-steps)" in err and not (tmp_path / "s").exists()


def test_data_training_would_refuse_is_refused_before_the_study_is_made(tiny_bert, intent_data, tmp_path, capsys):
    """A row with an empty text: tune exited 2 after making the study (study.db, assess.json), so the same command on
    the fixed data was refused as "a study named 'loratune' already exists". Now nothing is made before the refusal."""
    import shutil

    data = tmp_path / "bad"
    shutil.copytree(intent_data, data)
    with open(data / "train.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "", "label": "pin"}) + "\n")
    study = tmp_path / "study"
    ov = [o for o in overrides(str(tiny_bert), intent_data, tmp_path / "unused", num_threads=1)
          if not o.startswith(("output_dir=", "dataset_name="))]
    rc = main(["tune", *ov, f"dataset_name={data}", "--study-dir", str(study), "-q", "--budget", "1trials",
               "--trial-steps", "3"])
    shown = flat("".join(capsys.readouterr()))
    assert rc == 2 and "Traceback" not in shown and "empty" in shown, shown
    assert not study.exists()


@pytest.mark.parametrize("budget", ["10ex", "2s"])
def test_a_budget_smaller_than_one_trial_is_refused_before_training(budget, tiny_bert, intent_data, tmp_path, capsys):
    """A budget that holds no whole trial: `--budget 2s` exited 1 with an empty trial table and no error line;
    `--budget 10ex` trained a trial the budget cut at step 2 (160% spent) and exported it as the recommendation. Now:
    exit 2 before any trial trains, naming the smallest budget that holds one (steps x batch)."""
    study = tmp_path / "study"
    ov = [o for o in overrides(str(tiny_bert), intent_data, tmp_path / "unused", num_threads=1)
          if not o.startswith(("max_steps=", "eval_steps=", "output_dir=", "per_device_train_batch_size="))]
    rc = main(["tune", *ov, "per_device_train_batch_size=4", "--study-dir", str(study), "-q", "--budget", budget,
               "--trial-steps", "5"])
    shown = flat("".join(capsys.readouterr()))
    assert rc == 2, shown
    assert "Traceback" not in shown and "cannot hold one trial" in shown
    assert "5 steps x 4 = 20 examples" in shown
    if budget == "10ex":
        assert "continue this study with --resume --budget 20ex or more" in shown
    assert not list((study / "trials").glob("*")) if (study / "trials").exists() else True
    assert not (study / "final" / "study.json").exists()
    if budget == "10ex":  # the printed fix works: the same command with --resume and the budget it names
        rc = main(["tune", *ov, "per_device_train_batch_size=4", "--study-dir", str(study), "-q", "--resume",
                   "--budget", "20ex", "--trial-steps", "5"])
        shown = flat("".join(capsys.readouterr()))
        assert rc == 0, shown
        assert len(list((study / "trials").glob("*"))) == 1 and (study / "final" / "study.json").is_file()


@pytest.mark.parametrize("made", [False, True])
def test_a_ctrl_c_says_resume_only_where_a_study_was_kept(made, tiny_bert, intent_data, tmp_path, monkeypatch,
                                                            capsys):
    """A Ctrl-C before the study was made said "finished trials are kept; continue with --resume", and the resume
    found no study to resume."""
    import importlib

    T = importlib.import_module("loratune.search.tune")  # (loratune.search.tune, the attribute, is the function)
    study = tmp_path / "s"

    def interrupted(*a, **k):
        if made:
            study.mkdir()
            (study / "study.db").write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "tune", interrupted)
    rc = main(["tune", *overrides(tiny_bert, intent_data, tmp_path / "unused"), "--study-dir", str(study), "-q"])
    text = flat(capsys.readouterr().out)
    assert rc == 130
    if made:
        assert f"finished trials are kept; continue with `loratune tune --resume --study-dir {study}`" in text
    else:
        assert f"stopped before the study was made; nothing was kept in {study}" in text and "--resume" not in text


def test_a_ctrl_c_finds_the_study_of_a_study_dir_given_with_a_tilde(tmp_path, monkeypatch):
    """`--study-dir '~/s'`: tune made ~/s/study.db (the `~` expanded), the Ctrl-C message looked for ./~/s, said nothing
    was kept and to start again with the same command, which the existing study then refused."""
    from types import SimpleNamespace

    from loratune.commands.tune import _kept_after_interrupt

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    args = SimpleNamespace(storage=None, study_dir="~/s")
    assert _kept_after_interrupt(args).startswith("stopped before the study was made; nothing was kept in ~/s")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "study.db").write_bytes(b"")
    assert _kept_after_interrupt(args) == ("finished trials are kept; continue with "
                                           "`loratune tune --resume --study-dir ~/s`")


def test_a_ctrl_c_while_a_finished_trial_is_diagnosed_keeps_it_and_resume_does_not_train_it_again(
        tiny_bert, intent_data, tmp_path, monkeypatch, capsys):
    """Ctrl-C landing after trial #0's training returned (its run.json `completed`, val macro-F1 0.532), while tune
    diagnosed it: the study failed it as "interrupted by the user" (val '-') and `tune --resume` trained the same
    point again as trial #1 (864 examples charged for 608)."""
    import signal as sig
    from pathlib import Path

    import loratune.diagnose as diagnose_mod
    from loratune.search.study import Study

    study = tmp_path / "study"
    ov = [o for o in overrides(tiny_bert, intent_data, tmp_path / "unused", num_threads=1)
          if not o.startswith(("max_steps=", "output_dir="))]
    cmd = ["tune", *ov, "--study-dir", str(study), "-q", "--budget", "2trials", "--strategy", "random",
           "--trial-steps", "8"]
    original, landed = diagnose_mod.diagnose, []

    def ctrl_c_lands(run_dir, *a, **k):  # SIGINT arrives as the first trial is diagnosed: the handler now set runs
        if not landed and isinstance(run_dir, (str, Path)) and "trials" in Path(run_dir).parts:
            landed.append(run_dir)
            sig.getsignal(sig.SIGINT)(sig.SIGINT, None)
        return original(run_dir, *a, **k)

    monkeypatch.setattr(diagnose_mod, "diagnose", ctrl_c_lands)
    old = sig.signal(sig.SIGINT, sig.default_int_handler)
    try:
        assert main(cmd) == 130
    finally:
        sig.signal(sig.SIGINT, old)
    monkeypatch.setattr(diagnose_mod, "diagnose", original)
    assert len(landed) == 1
    first = Study.open(study, worker=True, heartbeat_s=1)
    try:
        (rec,) = first.records()
    finally:
        first.close()
    run = RunStore(rec.run_dir).read_run()
    assert run["status"] == "completed" and rec.result.status == "completed", run
    assert rec.result.value is not None and rec.result.value == pytest.approx(run["best"]["val/macro_f1"])
    capsys.readouterr()
    assert main([*cmd, "--resume"]) == 0, capsys.readouterr().out
    again = Study.open(study, worker=True, heartbeat_s=1)
    try:
        recs = again.records()
    finally:
        again.close()
    assert len(recs) == 2 and recs[0].number == rec.number and recs[0].result == rec.result
    assert recs[0].spec.key != recs[1].spec.key, "the finished trial was trained again"


@pytest.mark.parametrize("given", ["precision=bf16", "precision=auto"])
def test_a_resume_refusal_says_a_precision_the_study_never_recorded_was_inferred(given, tmp_path, capsys, monkeypatch):
    # a study recorded before train.precision existed reads as fp32 (config.RECORDED_BEFORE_KEY); `--resume
    # precision=bf16` was refused with "was set up with precision=fp32", a value the user never set and the record
    # never held: the refusal says it was inferred
    import sys

    import yaml

    from loratune.config import load_config, to_yaml
    from loratune.search.protocol import ProtocolSettings
    from loratune.search.study import Study

    import loratune.search.tune  # noqa: F401 (the package's `tune` is the function)

    recorded = yaml.safe_load(to_yaml(load_config(None, ["per_device_train_batch_size=8", "dataset_name=/d/intent"])))
    del recorded["train"]["precision"]  # an older loratune's record
    Study.open(tmp_path / "s", meta={"strategy": "random", "seed": 3, "budget": "2trials",
                                     "base_config": yaml.safe_dump(recorded), "settings": ProtocolSettings().to_dict(),
                                     "plan": {"max_steps": 8, "examples": 64}}).close()

    def stop(*a, **k):
        raise RuntimeError("got past the checks")

    monkeypatch.setattr(sys.modules["loratune.search.tune"], "Budget", type("B", (), {"parse": staticmethod(stop)}))
    assert main(["tune", "--resume", "--study-dir", str(tmp_path / "s"), "-q", given]) == 2
    err = flat(capsys.readouterr().err)
    assert (f"the study in {tmp_path / 's'} was set up with precision=fp32 (inferred, not recorded: the study was "
            "recorded by a loratune from before train.precision, which ran as fp32): a resume continues it") in err, err
    with pytest.raises(RuntimeError, match="got past the checks"):  # the inferred value itself resumes
        main(["tune", "--resume", "--study-dir", str(tmp_path / "s"), "-q", "precision=fp32"])
