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
