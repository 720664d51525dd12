"""The transformers floor (versions.TRANSFORMERS_FLOOR) is checked where a model's weights load (models.load_*): the
CLI (exit 2) and the Python API alike refuse train / predict / evaluate on an older transformers (api.train on 5.0.0
crashed with a traceback in pooled_block), while the commands that only read records and configs (diagnose, rules,
plan) run as they did: the check used to sit in cli.main and refused them too."""

from __future__ import annotations

import pytest

from loratune import api, versions
from loratune.cli import main
from loratune.config import load_config
from loratune.errors import UserError

from support import overrides

OLD = "5.0.0"
NEEDS = f"loratune needs transformers >= {versions.TRANSFORMERS_FLOOR} (found {OLD})"
FIX = f"pip install -U 'transformers>={versions.TRANSFORMERS_FLOOR}'"


@pytest.fixture(scope="module")
def trained(tiny_bert, intent_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("floor") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=2)]) == 0
    return out


@pytest.fixture
def old_transformers(monkeypatch):
    monkeypatch.setattr(versions, "installed", lambda dist: {"transformers": OLD}[dist])


@pytest.mark.parametrize("argv", [["diagnose", "{run}"], ["rules"], ["plan", "{model}", "--seq-len", "64"]])
def test_commands_that_load_no_model_run_on_an_older_transformers(trained, tiny_bert, old_transformers, capsys,
                                                                    argv):
    assert main([a.format(run=trained, model=tiny_bert) for a in argv]) == 0
    assert "needs transformers" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["predict", "{run}", "hello"], ["evaluate", "{run}", "--split", "validation"]])
def test_cli_commands_that_load_the_model_refuse_with_exit_2(trained, old_transformers, capsys, argv):
    assert main([a.format(run=trained) for a in argv]) == 2
    err = capsys.readouterr().err
    assert NEEDS in err and f"fix: {FIX}" in err
    assert "Traceback" not in err


def test_cli_train_refuses_before_it_writes_a_run(tiny_bert, intent_data, tmp_path, old_transformers, capsys):
    out = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out)]) == 2
    assert NEEDS in capsys.readouterr().err
    assert not out.exists()


def test_the_api_refuses_train_predict_and_evaluate(trained, tiny_bert, intent_data, tmp_path, old_transformers):
    cfg = load_config(overrides=overrides(tiny_bert, intent_data, tmp_path / "api"))
    for call in (lambda: api.train(cfg, progress=False), lambda: api.predict(trained, "hello"),
                 lambda: api.evaluate(trained, "validation")):
        with pytest.raises(UserError) as err:
            call()
        assert err.value.problem == NEEDS and err.value.fix == FIX
    assert not (tmp_path / "api").exists()
