"""A finished run whose files were damaged afterwards (a kill or a full disk during a best-so-far save, an emptied
config.yaml): predict and evaluate refuse it naming the file (exit 2, no traceback), and report still writes its page
without the examples that need the model."""

from __future__ import annotations

import shutil

import pytest

from loratune.cli import main

from support import flat


def _copy_with_empty(trained, tmp_path, name: str):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / name).write_text("")
    return run


@pytest.mark.parametrize("name", ["adapter/adapter_model.safetensors", "adapter/adapter_config.json"])
def test_an_emptied_adapter_file_is_named_by_predict_evaluate_and_report(trained, tmp_path, capsys, name):
    run = _copy_with_empty(trained, tmp_path, name)
    capsys.readouterr()
    for cmd in (["predict", str(run), "lost my card"], ["evaluate", str(run), "--split", "test"]):
        assert main(cmd) == 2, cmd
        err = flat(capsys.readouterr().err)
        assert f"the saved model's {name} is damaged" in err and "fix: train the run again" in err, err
        assert "Traceback" not in err
    page = tmp_path / "r.html"
    assert main(["report", str(run), "-o", str(page)]) == 0  # the page, without the examples that need the model
    html = flat(page.read_text(encoding="utf-8"))
    assert f"example texts unavailable: the saved model&#x27;s {name} is damaged" in html


def test_an_emptied_config_yaml_is_refused_not_read_as_the_default_base_model(trained, tmp_path, capsys):
    run = _copy_with_empty(trained, tmp_path, "config.yaml")
    capsys.readouterr()
    for cmd in (["predict", str(run), "lost my card"], ["evaluate", str(run), "--split", "test"]):
        assert main(cmd) == 2, cmd
        err = flat(capsys.readouterr().err)
        assert f"run '{run}': its config.yaml is empty or damaged" in err and "fix: train the run again" in err, err


def test_a_config_yaml_naming_another_base_model_than_the_saved_one_is_refused(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    text = (run / "config.yaml").read_text(encoding="utf-8")
    base = next(line.split(":", 1)[1].strip() for line in text.splitlines() if "name_or_path:" in line)
    (run / "config.yaml").write_text(text.replace(base, "embedded:minilm"), encoding="utf-8")
    capsys.readouterr()
    assert main(["predict", str(run), "lost my card"]) == 2
    err = flat(capsys.readouterr().err)
    assert "names the base model 'embedded:minilm' but the saved model was trained on" in err and base in err, err
    assert main(["predict", str(trained), "lost my card"]) == 0  # the intact run still predicts
