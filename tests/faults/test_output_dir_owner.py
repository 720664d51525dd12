"""What a run may replace in its output_dir: only what a loratune run wrote there. A user's own config.yaml (the one
`--config` read, in the folder its output_dir names) and a run.json of theirs were replaced or deleted silently."""

from __future__ import annotations

import json
import shutil

import yaml

from loratune.cli import main

from support import flat, overrides

HAND_WRITTEN = """# my experiment notes: tried r=4 because r=8 overfit last week
x-common: &c {{learning_rate: 5.0e-3, seed: 3}}
model: {{name_or_path: {model}, max_length: 16}}
data: {{dataset_name: {data}}}
adapter: {{r: 4, lora_alpha: 8, target_modules: [attn.q, attn.v]}}
train: {{<<: *c, output_dir: {out}, max_steps: 12, per_device_train_batch_size: 8, eval_steps: 4, train_eval_size: 16}}
"""


def test_a_hand_written_config_in_its_own_output_dir_is_refused_and_kept(tiny_bert, intent_data, tmp_path, capsys):
    # `loratune train --config exp/config.yaml` with `output_dir: exp`: the comments and anchors were replaced by the
    # resolved dump without a word
    exp = tmp_path / "exp"
    exp.mkdir()
    mine = HAND_WRITTEN.format(model=tiny_bert, data=intent_data, out=exp)
    (exp / "config.yaml").write_text(mine)
    assert main(["train", "-q", "--config", str(exp / "config.yaml")]) == 2
    err = flat(capsys.readouterr().err)
    assert f"output_dir '{exp}' holds a config.yaml that no loratune run wrote (no loratune run.json beside it)" in err
    assert f"another output_dir (a new or empty folder, e.g. output_dir={exp / 'run'})" in err
    assert "Traceback" not in err
    assert (exp / "config.yaml").read_text() == mine
    assert sorted(p.name for p in exp.iterdir()) == ["config.yaml"]  # no run.json, no lock left
    # the fix it names: a folder inside it
    assert main(["train", "-q", "--config", str(exp / "config.yaml"), f"output_dir={exp / 'run'}"]) == 0
    assert (exp / "config.yaml").read_text() == mine


def test_a_run_json_of_the_users_own_is_no_loratune_run(tiny_bert, intent_data, tmp_path, capsys):
    # any run.json passed for a run's record: adapter/ beside a user's {"mine": 1} was deleted as an earlier run's
    out = tmp_path / "mine"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter" / "notes.txt").write_text("keep")
    (out / "run.json").write_text('{"mine": 1}\n')
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 2
    err = flat(capsys.readouterr().err)
    assert f"output_dir '{out}' holds a run.json that is no loratune run's record: a run there would replace it" in err
    assert (out / "adapter" / "notes.txt").read_text() == "keep" and (out / "run.json").read_text() == '{"mine": 1}\n'
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "run.json"]


def test_the_config_an_earlier_run_wrote_is_replaced_with_the_note_and_a_hand_edited_one_is_kept(
        trained, tmp_path, capsys):
    # `loratune train --config RUN/config.yaml` re-runs a run where it was: loratune wrote that file, so it is the
    # run's to replace (said in the note); once edited by hand it is the user's, and is refused
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["train", "-q", "--config", str(run / "config.yaml"), f"output_dir={run}", "seed=7"]) == 0
    err = flat(capsys.readouterr().err)
    assert f"note: {run} held a completed run" in err and "replaced by this run" in err
    assert json.loads((run / "run.json").read_text())["config"]["train"]["seed"] == 7
    assert yaml.safe_load((run / "config.yaml").read_text())["train"] == {
        **yaml.safe_load((trained / "config.yaml").read_text())["train"], "seed": 7, "output_dir": str(run)}
    edited = "# lower lr next\n" + (run / "config.yaml").read_text().replace("seed: 7", "seed: 8")
    (run / "config.yaml").write_text(edited)
    assert main(["train", "-q", "--config", str(run / "config.yaml")]) == 2
    err = flat(capsys.readouterr().err)
    assert (f"holds a config.yaml that no loratune run wrote (not the config its run.json records: written or edited "
            "by hand?)") in err
    assert (run / "config.yaml").read_text() == edited
    assert json.loads((run / "run.json").read_text())["config"]["train"]["seed"] == 7  # the earlier run kept whole


def test_a_run_into_a_tune_study_and_a_study_onto_a_run_are_refused(tiny_bert, intent_data, trained, tmp_path,
                                                                    capsys):
    # both were accepted without a word: the run's files went beside study.db (show/report then read the folder as
    # the study), the study's beside a run's record (read as the run)
    from loratune.search.study import Study, optuna_quiet

    study = tmp_path / "study"
    with optuna_quiet():  # (optuna's INFO line, to a handler an earlier test's capture may have closed)
        Study.open(study, meta={"strategy": "random"}).close()
    (study / "decisions.jsonl").write_text("")
    before = sorted(p.name for p in study.iterdir())
    capsys.readouterr()
    for dry in ([], ["--dry-run"]):
        assert main(["train", "-q", *dry, *overrides(tiny_bert, intent_data, study)]) == 2
        err = flat(capsys.readouterr().err)
        assert (f"output_dir '{study}' holds a tune study (study.db, decisions.jsonl): a run there would mix its "
                "files with the study's") in err, err
        assert "give the run a folder of its own, e.g. output_dir=runs/latest" in err and "Traceback" not in err
        assert sorted(p.name for p in study.iterdir()) == before
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    kept = sorted(p.name for p in run.iterdir())
    ov = [o for o in overrides(tiny_bert, intent_data, tmp_path / "unused", num_threads=1)
          if not o.startswith("output_dir=")]
    for resume in ([], ["--resume"]):
        assert main(["tune", *ov, "--study-dir", str(run), "-q", "--budget", "1trials", "--trial-steps", "3",
                     *resume]) == 2
        err = flat(capsys.readouterr().err)
        assert f"--study-dir '{run}' holds a run (run.json, history.jsonl), not a tune study" in err, err
        assert "give the study a folder of its own, e.g. --study-dir runs/tune" in err and "Traceback" not in err
        assert sorted(p.name for p in run.iterdir()) == kept  # no study.db, no lock


def test_a_dry_run_refuses_the_output_dir_the_real_run_refuses(tiny_bert, intent_data, trained, tmp_path, capsys):
    # `train --dry-run` into a folder holding a user's own config.yaml / run.json printed the plan and exited 0, where
    # the real run exits 2: the dry run must say what the real run would, before the model loads
    exp = tmp_path / "exp"
    exp.mkdir()
    mine = HAND_WRITTEN.format(model=tiny_bert, data=intent_data, out=exp)
    (exp / "config.yaml").write_text(mine)
    assert main(["train", "--dry-run", "--config", str(exp / "config.yaml")]) == 2
    captured = capsys.readouterr()
    err = flat(captured.err)
    assert f"output_dir '{exp}' holds a config.yaml that no loratune run wrote (no loratune run.json beside it)" in err
    assert "Traceback" not in err and "planned:" not in captured.out
    assert sorted(p.name for p in exp.iterdir()) == ["config.yaml"] and (exp / "config.yaml").read_text() == mine
    out = tmp_path / "mine"
    out.mkdir()
    (out / "run.json").write_text('{"mine": 1}\n')
    assert main(["train", "--dry-run", *overrides(tiny_bert, intent_data, out)]) == 2
    assert f"output_dir '{out}' holds a run.json that is no loratune run's record" in flat(capsys.readouterr().err)
    # a folder holding a loratune run's outputs plans as before, saying what the real run would replace (its note),
    # and leaves the run whole
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main(["train", "--dry-run", *overrides(tiny_bert, intent_data, run)]) == 0
    out = flat(capsys.readouterr().out)
    assert (f"note: {run} held a completed run (best " in out and "saved model): replaced by this run; give another "
            "output_dir to keep it (when it trains: the dry run leaves it whole)" in out), out
    assert "planned:" in out
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept
    # and a new folder plans with no such note
    assert main(["train", "--dry-run", *overrides(tiny_bert, intent_data, tmp_path / "new")]) == 0
    assert "replaced by this run" not in flat(capsys.readouterr().out)


def test_api_plan_refuses_the_output_dir_api_train_refuses_before_the_model_loads(tiny_bert, intent_data, tmp_path,
                                                                                  monkeypatch):
    # api.plan asked only store.earlier_run_note: a tune study's folder (or a file) as output_dir was planned, where
    # api.train refuses it (RunStore.create -> store.check_output_dir) once the model has loaded; the CLI checked it
    # before its dry run, a notebook's api.plan did not
    import pytest

    from loratune import api, models
    from loratune.errors import UserError

    study = tmp_path / "study"
    study.mkdir()
    (study / "decisions.jsonl").write_text("")
    afile = tmp_path / "afile"
    afile.write_text("x")
    loaded = []

    def load_classifier(*args, **kwargs):
        loaded.append(args)
        raise AssertionError("the model loaded: the output_dir was not checked first")

    monkeypatch.setattr(models, "load_classifier", load_classifier)
    for out, said in ((study, f"output_dir '{study}' holds a tune study (decisions.jsonl): a run there would mix its "
                              "files with the study's"),
                      (afile, f"output_dir '{afile}' is a file, not a directory")):
        cfg = api.load_config(None, overrides(tiny_bert, intent_data, out))
        for call in (api.plan, lambda c: api.train(c, progress=False)):
            with pytest.raises(UserError) as e:
                call(cfg)
            assert said in str(e.value), str(e.value)
    assert not loaded and sorted(p.name for p in study.iterdir()) == ["decisions.jsonl"]
