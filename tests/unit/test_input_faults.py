"""Inputs a fuzzer gave that fell over with a traceback (exit 1): a path with a name over the file system's limit, a
symlink loop, a file nested thousands deep or holding a number of thousands of digits. Each is refused by name with a
fix (exit 2), never a traceback."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from loratune.cli import main
from loratune.config import load_config
from loratune.errors import ConfigError, UserError, require_file
from loratune.rules import read_threshold_file

LONG = "a" * 300  # a file name over NAME_MAX (255) bytes: Path.is_file() / exists() raise ENAMETOOLONG (Python 3.11)


@pytest.mark.parametrize("key", ["name_or_path", "dataset_name", "train_file", "validation_file", "probe_file",
                                 "init_from"])
def test_a_path_key_with_a_name_over_the_limit_is_a_config_problem(tmp_path, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}={tmp_path / LONG}"])
    problem = next(p for p in info.value.problems if LONG in p)
    assert "has a file or folder name of 300 bytes; file systems take at most 255" in problem
    assert "give a shorter one" in problem


def test_a_file_argument_with_a_name_over_the_limit_is_refused_by_name(tmp_path):
    with pytest.raises(UserError) as info:  # --config, predict --file, --thresholds: all read through require_file
        require_file(tmp_path / f"{LONG}.txt", "file", "give a text file with one text per line")
    assert "file '" in info.value.problem and "has a file name of 304 bytes" in info.value.problem
    assert "give a shorter one" in info.value.fix
    with pytest.raises(UserError, match="has a file name of 305 bytes"):
        read_threshold_file(tmp_path / f"{LONG}.yaml")


@pytest.mark.parametrize("argv", [["train", "--dry-run", "--config", "{tmp}/" + LONG + ".yaml"],
                                  ["train", "--dry-run", "probe_file={tmp}/" + LONG],
                                  ["assess", "--no-probe", "--out", "{tmp}/" + LONG + ".json"]])
def test_the_cli_says_a_name_is_too_long_and_exits_2(tmp_path, capsys, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv + [f"output_dir={tmp_path / 'out'}"] * (argv[0] == "train")) == 2
    err = capsys.readouterr().err
    assert "bytes; file systems take at most 255" in err and "Traceback" not in err


def test_a_name_too_long_that_no_reader_checked_still_exits_2(monkeypatch, capsys):
    from loratune.commands import show

    def run(args):
        raise OSError(errno.ENAMETOOLONG, "File name too long", "/x/" + LONG)

    monkeypatch.setattr(show, "run", run)
    assert main(["show", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert f"'/x/{LONG}' has a name too long for the file system (at most 255 bytes" in err
    assert "fix: give a shorter name" in err


def test_init_from_at_a_symlink_loop_is_a_config_check_not_a_runtime_error(tmp_path):
    from loratune.config import init_from_inside_output

    loop = tmp_path / "loop"
    loop.symlink_to("loop")  # Path.resolve() raised RuntimeError 'Symlink loop' here (exit 1)
    assert init_from_inside_output(str(loop), str(tmp_path / "out")) is None  # left to the reader, which refuses it
    assert init_from_inside_output(str(tmp_path / "out" / "adapter"), str(tmp_path / "out")).startswith("inside")
    with pytest.raises(UserError, match=r"train.init_from: .*loop has no adapter_config.json"):
        from loratune.adapt import warm_start

        warm_start(None, load_config(None, [f"init_from={loop}", f"output_dir={tmp_path / 'out'}"]))


@pytest.mark.parametrize("sub", ["", "x"])
def test_an_output_dir_at_a_symlink_loop_is_refused_before_training(tmp_path, sub):
    from loratune.store import check_output_dir

    loop = tmp_path / "loop"
    loop.symlink_to("loop")  # --dry-run said nothing (exit 0) while the run's mkdir refused it ('File exists')
    with pytest.raises(UserError) as info:
        check_output_dir(loop / sub if sub else loop)
    assert f"'{loop}' is a symbolic link that leads nowhere (a loop or a missing target)" in info.value.problem
    assert "output_dir=runs/latest" in info.value.fix


DEEP_JSON = "[" * 5000 + "]" * 5000  # Python's json: RecursionError
DEEP_YAML = "a: " + "[" * 5000 + "]" * 5000 + "\n"  # PyYAML: RecursionError
LONG_INT = "9" * 5000  # over Python's int-string limit (4300 digits): ValueError 'Exceeds the limit'


def test_a_json_record_nested_too_deep_or_with_a_huge_number_is_not_valid_json(tmp_path):
    from loratune.history_io import read_trainer_state
    from loratune.store import read_json

    (tmp_path / "run.json").write_text(DEEP_JSON, encoding="utf-8")
    with pytest.raises(UserError, match=r"is not valid JSON \(nested too deeply to read\)"):
        read_json(tmp_path / "run.json")
    state = tmp_path / "trainer_state.json"
    state.write_text('{"log_history": [{"step": %s, "loss": 1.0}]}' % LONG_INT, encoding="utf-8")
    with pytest.raises(UserError, match=r"is not valid JSON \(a number of more than 4300 digits\)"):
        read_trainer_state(state)



def test_a_deep_run_json_is_no_callback_record_and_a_deep_data_file_is_refused_by_line(tmp_path):
    from loratune.data import load_dataset
    from loratune.report import _callback_record

    (tmp_path / "run.json").write_text(DEEP_JSON, encoding="utf-8")
    assert _callback_record(tmp_path) is False  # show / report fell over here
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n' + DEEP_JSON + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"train.jsonl' line 2 is not valid JSON \(nested too deeply to read\)"):
        load_dataset(load_config(None, [f"dataset_name={tmp_path}"]).data)


@pytest.mark.parametrize("text", [DEEP_YAML, f"r: {LONG_INT}\n"])
def test_a_config_or_thresholds_file_nested_too_deep_or_with_a_huge_number_is_not_valid_yaml(tmp_path, text):
    f = tmp_path / "c.yaml"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=r"config file '.*c.yaml' is not valid YAML: (nested too deeply|a number of)"):
        load_config(f)
    with pytest.raises(UserError, match=r"thresholds file '.*c.yaml' is not valid YAML"):
        read_threshold_file(f)


def test_an_override_with_a_huge_number_is_a_config_problem(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"r={LONG_INT}", f"seed={LONG_INT}"])
    assert [p.split(":")[0] for p in info.value.problems] == ["adapter.r", "train.seed"]


def _trainer_state(folder: Path, losses: list, evals: list) -> Path:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    log = [{"step": 10 * (i + 1), "loss": v, "epoch": 0.1 * (i + 1)} for i, v in enumerate(losses)]
    log += [{"step": s, "eval_loss": v, "eval_accuracy": 0.5} for s, v in evals]
    # as a Trainer writes it (json.dumps: a NaN loss is the NaN literal, never null)
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": log, "global_step": 90}), encoding="utf-8")
    return folder


@pytest.mark.parametrize("bad", [None, True, [1.0], {"a": 1}])
def test_a_logged_loss_of_no_number_type_is_ignored_with_a_note_not_read_as_a_divergence(tmp_path, bad):
    from loratune.api import diagnose

    losses = [1.9, 1.8, 1.7, 1.6, bad, 1.4, 1.3, 1.2, 1.1]
    run = _trainer_state(tmp_path / "r", losses, [(10, 1.95), (40, 1.8), (70, 1.65)])
    d = diagnose(str(run))
    assert d.verdict == "healthy"  # the one null read as non-finite: 'diverged, learning_rate /10'
    assert any("values that are not numbers (null, true/false, a list or an object) under loss: ignored" in n
               for n in d.notes)
    nan = _trainer_state(tmp_path / "nan", [1.9, 1.8, 1.7, 1.6, float("nan"), 1.4, 1.3, 1.2, 1.1],
                         [(10, 1.95), (40, 1.8), (70, 1.65)])
    assert diagnose(str(nan)).verdict == "diverged"  # a NaN literal is still a non-finite loss


def test_log_entries_at_negative_steps_are_skipped_and_a_log_of_only_those_is_refused(tmp_path, capsys):
    import json

    (tmp_path / "trainer_state.json").write_text(json.dumps(
        {"log_history": [{"step": -5, "loss": 1.0}, {"step": -1, "eval_loss": 1.0}]}), encoding="utf-8")
    assert main(["diagnose", str(tmp_path)]) == 2  # read as 'no train/loss values' and 'val loss non-finite'
    assert "none with a numeric `step` of 0 or more" in capsys.readouterr().err


def test_a_whole_path_too_long_of_short_names_is_said_as_such(monkeypatch, capsys):
    """ENAMETOOLONG also comes of a whole path over PATH_MAX whose every name is short: the message said a name was
    over 255 bytes (each was 100)."""
    from loratune.commands import show

    long_path = "/".join(["x" * 100] * 45)

    def run(args):
        raise OSError(errno.ENAMETOOLONG, "File name too long", long_path)

    monkeypatch.setattr(show, "run", run)
    assert main(["show", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert f"is too long for the file system ({len(long_path)} bytes; at most 4096 a whole path)" in err
    assert "at most 255 bytes" not in err


def test_a_run_json_value_that_reads_wrong_is_no_invalid_json(tmp_path):
    """A valid run.json whose wall_s is no number ('abc') was read as 'run.json is not valid JSON' and dropped whole
    (status unknown): with_liveness raised ValueError inside the parse's try. The record is read; wall_s no number is
    left as none."""
    from loratune.history_io import read_loratune_run

    (tmp_path / "run.json").write_text(json.dumps({"status": "running", "wall_s": "abc", "labels": ["a", "b"],
                                                   "started_at": "2020-01-01T00:00:00"}))
    (tmp_path / "history.jsonl").write_text('{"step": 0, "val/loss": 0.7}\n{"step": 10, "val/loss": 0.6}\n')
    h = read_loratune_run(tmp_path)
    assert not any("not valid JSON" in n for n in h.notes)
    assert h.meta["status"] == "died" and h.meta["labels"] == ["a", "b"]


def test_a_damaged_local_study_file_is_said_damaged_not_a_server_to_check(tmp_path):
    """`tune --resume` on a study.db that is not a database ('file is not a database') advised 'check the URL, the
    server and the credentials': for a local SQLite file the fix is a new --study-dir (fuzz hunt)."""
    import sqlite3

    from loratune.search.study import storage_error

    db = tmp_path / "study.db"
    db.write_bytes(b"this is no sqlite file at all" * 10)
    try:
        sqlite3.connect(db).execute("select 1 from sqlite_master")
    except sqlite3.DatabaseError as exc:
        err = storage_error(f"sqlite:///{db}", exc)
    assert "is damaged" in str(err) and "new --study-dir" in err.fix
    assert "credentials" not in err.fix
