"""Data and paths that used to pass the dry run and then crash training (or train silently on bad rows):
each is now a UserError (exit 2, the problem and the fix), in the dry run and in training alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratune.cli import main

from support import flat, make_rows, overrides, write_jsonl


def _data(tmp_path, train, validation=None):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    write_jsonl(d / "train.jsonl", train)
    if validation is not None:
        write_jsonl(d / "validation.jsonl", validation)
    return d


@pytest.mark.parametrize("dry", [True, False])
def test_one_row_per_class_cannot_carve_validation(dry, tiny_bert, tmp_path, capsys):
    d = _data(tmp_path, make_rows(1, seed=1))
    args = ["train", "-q", *(["--dry-run"] if dry else []), *overrides(tiny_bert, d, tmp_path / "run")]
    assert main(args) == 2
    err = flat(capsys.readouterr().err)
    assert "validation: 0 rows" in err and "at least 2 rows" in err and "fix:" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("which", ["all", "some"])
def test_empty_texts_are_an_error_as_in_assess(which, tiny_bert, tmp_path, capsys):
    rows = make_rows(6, seed=1)
    for i, r in enumerate(rows):
        if which == "all" or i in (2, 5):
            r["text"] = "  " if i % 2 else ""
    d = _data(tmp_path, rows, make_rows(3, seed=2))
    for dry in (["--dry-run"], []):
        assert main(["train", "-q", *dry, *overrides(tiny_bert, d, tmp_path / "run")]) == 2
        err = flat(capsys.readouterr().err)
        assert ("every text" in err) if which == "all" else ("2 empty text(s)" in err and "lines 3, 6" in err)


def test_missing_label_column_suggests_the_label_like_one(tiny_bert, tmp_path, capsys):
    rows = [{"text": r["text"], "intent": r["label"], "id": i} for i, r in enumerate(make_rows(4, seed=1))]
    d = _data(tmp_path, rows)
    assert main(["train", "--dry-run", *overrides(tiny_bert, d, tmp_path / "run")]) == 2
    err = flat(capsys.readouterr().err)
    assert "label_column=intent" in err and "label_column=text" not in err


def test_missing_local_dataset_path_is_not_a_hub_error(tiny_bert, tmp_path, capsys):
    assert main(["train", "--dry-run", *overrides(tiny_bert, tmp_path / "nope" / "data", tmp_path / "run")]) == 2
    err = flat(capsys.readouterr().err)
    assert "does not exist" in err and "hub" not in err.lower()


def test_missing_local_model_path_names_no_library_dump(intent_data, tmp_path, capsys):
    assert main(["train", "--dry-run", *overrides("models/nothere", intent_data, tmp_path / "run")]) == 2
    err = flat(capsys.readouterr().err)
    assert "not a local folder" in err and "Traceback" not in err and len(err) < 600


def test_duplicate_yaml_keys_are_rejected(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("adapter:\n  r: 8\n  r: 16\ntrain:\n  learning_rate: 1e-3\n")
    assert main(["train", "--dry-run", "--config", str(cfg)]) == 2
    err = flat(capsys.readouterr().err)
    assert "duplicate" in err and "r" in err


def test_two_trainings_into_one_output_dir(tiny_bert, intent_data, tmp_path, capsys):
    from loratune.store import RunLock

    out = tmp_path / "run"
    out.mkdir()
    held = RunLock(out)
    held.acquire()
    try:
        assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 2
        assert "another loratune process is training into" in flat(capsys.readouterr().err)
    finally:
        held.release()
    assert not json.dumps([p.name for p in out.iterdir()]).count("run.json")


def test_the_shipped_demo_passes_its_own_assess_checks():
    """No text in two splits (train -> validation/test leakage) and no text with two labels, by assess's key."""
    from loratune.assess.text import normalise
    from loratune.data import embedded_data_dir

    seen: dict[str, tuple[str, str]] = {}
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "validation", "test"):
        for line in (embedded_data_dir() / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            key = normalise(row["text"])
            assert key not in seen or seen[key] == (split, row["label"]), (row, seen.get(key))
            seen.setdefault(key, (split, row["label"]))
            counts.setdefault(split, {}).setdefault(row["label"], 0)
            counts[split][row["label"]] += 1
    assert set(counts["train"].values()) == {24} and set(counts["test"].values()) == {10}  # still stratified
    assert len(counts["validation"]) == 77


@pytest.mark.parametrize("out,message", [("", "is the current folder"), (".", "is the current folder"),
                                         ("x" * 300, "has a folder name of 300 bytes")])
def test_an_output_dir_training_could_not_use_is_refused_in_the_dry_run(out, message, tiny_bert, intent_data,
                                                                        tmp_path, capsys, monkeypatch):
    """An empty output_dir wrote the run into the current folder (over its history.jsonl); a 300-byte name passed
    the dry run and ended training in 'File name too long'."""
    monkeypatch.chdir(tmp_path)
    args = [a for a in overrides(tiny_bert, intent_data, tmp_path) if not a.startswith("output_dir=")]
    assert main(["train", "--dry-run", *args, f"output_dir={out}"]) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_run_or_model_name_too_long_for_the_file_system_is_refused_by_predict_evaluate_params_and_plan(
        tmp_path, capsys):
    """A 300-byte name raised ENAMETOOLONG from the first stat (a traceback, exit 1) in predict (with --file too),
    evaluate, params and plan; refused with exit 2 by the shared check (store.check_name_length), as train, report
    and show refuse it: the run directory in RunStore.require, the model in plan's config loader."""
    from loratune import api
    from loratune.errors import UserError

    long = "a" * 300
    texts = tmp_path / "texts.txt"
    texts.write_text("hello\n", encoding="utf-8")
    run_said = (f"run directory '{tmp_path / long}' has a folder name of 300 bytes; file systems take at most 255",
                "fix: no folder can have such a name: give the output_dir of a `loratune train` run")
    model_said = (f"model '{tmp_path / long}' has a file or folder name of 300 bytes; file systems take at most 255",
                  "fix: give a preset (")
    for args, said in ((["predict", str(tmp_path / long), "hello"], run_said),
                       (["predict", str(tmp_path / long), "--file", str(texts)], run_said),
                       (["evaluate", str(tmp_path / long)], run_said),
                       (["params", str(tmp_path / long)], model_said),
                       (["plan", str(tmp_path / long)], model_said)):
        assert main(args) == 2, args
        err = flat(capsys.readouterr().err)
        assert all(s in err for s in said) and "Traceback" not in err, (args, err)
    with pytest.raises(UserError, match="has a folder name of 300 bytes"):
        api.evaluate(tmp_path / long)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["texts.txt"]  # nothing written


def test_the_dry_run_refuses_a_tracker_whose_package_is_missing(tiny_bert, intent_data, tmp_path, capsys,
                                                                monkeypatch):
    from loratune import trackers

    monkeypatch.setitem(trackers.EXTRAS, "mlflow", ("a_module_that_is_not_installed", "mlflow"))
    assert main(["train", "--dry-run", *overrides(tiny_bert, intent_data, tmp_path / "r"), "report_to=[mlflow]"]) == 2
    assert "needs the a_module_that_is_not_installed package" in capsys.readouterr().err


def test_planned_examples_count_the_rows_a_batch_can_hold(tiny_bert, intent_data, tmp_path, capsys):
    rows = sum(1 for _ in (intent_data / "train.jsonl").open())
    assert main(["train", "--dry-run", *overrides(tiny_bert, intent_data, tmp_path / "r"),
                 "per_device_train_batch_size=1000", "max_steps=8"]) == 0
    assert f"planned: 8 optimizer steps, {8 * rows} training examples" in capsys.readouterr().out


@pytest.mark.parametrize("text, said", [("lost \ud83d my card", "line 3 has a lone surrogate U+D83D at character 6"),
                                        (["lost", "my", "card"], "line 3 has a 'text' of ['lost', 'my', 'card']")])
def test_a_lone_surrogate_or_a_text_that_is_no_string_is_refused_by_train_assess_and_predict(
        text, said, tiny_bert, tmp_path, capsys):
    # a traceback in train (UTF-8 encoding of the text's hash), assess and predict --file (the tokenizer), or for a
    # list its str() trained as the text
    from loratune.commands.predict import read_texts
    from loratune.errors import UserError

    rows = make_rows(6, seed=1)
    rows[2]["text"] = text
    d = _data(tmp_path, rows, make_rows(3, seed=2))
    for cmd in (["train", "-q", "--dry-run"], ["train", "-q"], ["assess", "--no-probe"]):
        assert main([*cmd, *overrides(tiny_bert, d, tmp_path / "run")]) == 2, cmd
        err = flat(capsys.readouterr().err)
        assert "train.jsonl" in err and said in err and "fix:" in err, (cmd, err)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="line 3 has" if isinstance(text, str) else "line 3 has a 'text' of \\["):
        read_texts(str(d / "train.jsonl"))


def test_max_steps_0_is_refused_in_the_dry_run(tiny_bert, intent_data, tmp_path, capsys):
    # 0 was accepted and trained num_train_epochs (10 planned steps here); the help names only -1 for that
    assert main(["train", "--dry-run", *overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=0)]) == 2
    assert "train.max_steps: got 0; allowed: an integer >= -1 and not 0" in flat(capsys.readouterr().err)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("dry", [True, False])
def test_an_output_dir_that_cannot_be_created_is_named_in_the_dry_run_too(dry, tiny_bert, intent_data, tmp_path,
                                                                          capsys):
    # /proc passes os.access for root but refuses a new folder (ENOENT): the dry run said yes and training was a
    # traceback from RunStore.create's mkdir (exit 1)
    args = ["train", "-q", *(["--dry-run"] if dry else []), *overrides(tiny_bert, intent_data, "/proc/loratune-x")]
    assert main(args) == 2
    err = flat(capsys.readouterr().err)
    assert "output_dir '/proc/loratune-x' cannot be created in '/proc'" in err and "fix:" in err


def test_a_run_folder_that_fails_to_be_made_after_the_check_is_a_user_error(tmp_path, monkeypatch):
    from loratune.errors import UserError
    from loratune.store import RunStore

    def refuse(self, *a, **k):
        raise FileNotFoundError(2, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)  # (a folder gone between the check and the run's first write)
    with pytest.raises(UserError, match=r"output_dir '.*run' cannot be created \(No such file or directory\)"):
        RunStore(tmp_path / "run").create("{}\n")


@pytest.mark.parametrize("worker", [False, True])
def test_tune_under_a_launcher_is_refused_before_the_study_is_made(worker, tiny_bert, tmp_path, monkeypatch, capsys):
    # docs/distributed.md: `tune` trains its trials in one process; launched, every rank ran the study (the second
    # found it locked and failed with a traceback)
    for k, v in (("WORLD_SIZE", "2"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(k, v)
    study = tmp_path / "study"
    args = (["--worker"] if worker else
            ["--budget", "1trials", *overrides(tiny_bert, _data(tmp_path, make_rows(4, seed=1)), tmp_path / "unused")])
    assert main(["tune", "--study-dir", str(study), *args]) == 2
    err = flat(capsys.readouterr().err)
    assert "trains its trials in one process; it is not built to be launched (WORLD_SIZE 2, RANK 0" in err
    assert "fix: run `loratune tune` as one process, without accelerate launch / torchrun" in err
    assert not study.exists()


def test_an_import_failure_while_loading_a_model_is_not_blamed_on_the_folder(tiny_bert, monkeypatch):
    # after a Ctrl-C landed during an earlier call's lazy imports, transformers' lazy module raised this on the next
    # load, and loratune said "could not load the model from '<a good folder>' ... fix: check the folder's files"
    import transformers

    from loratune.config import load_config
    from loratune.errors import UserError
    from loratune.models import load_classifier

    def half_imported(*args, **kwargs):
        try:
            raise AttributeError("partially initialized module 'transformers.models.bert.modeling_bert' has no "
                                 "attribute 'BertForSequenceClassification'")
        except AttributeError as exc:  # as transformers.utils.import_utils._LazyModule.__getattr__ raises it
            raise ModuleNotFoundError("Could not import module 'BertForSequenceClassification'. Are this object's "
                                      "requirements defined correctly?") from exc

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", half_imported)
    cfg = load_config(None, [f"name_or_path={tiny_bert}"]).model
    with pytest.raises(UserError) as err:
        load_classifier(cfg, 4, False)
    assert err.value.problem == (f"a Python import failed while loading the model '{tiny_bert}' (ModuleNotFoundError: "
                                 "Could not import module 'BertForSequenceClassification'. Are this object's "
                                 "requirements defined correctly?): the model's files were not the problem")
    assert "restart the Python interpreter" in err.value.fix and "folder" not in err.value.fix
