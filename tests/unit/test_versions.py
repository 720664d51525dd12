"""The transformers floor: defined once (versions.TRANSFORMERS_FLOOR, pyproject.toml's `transformers>=` agrees) and
checked where a model loads (the CLI's exit 2 and the API: tests/integration/test_transformers_floor.py), so a too-old
transformers is refused with the pip command, never a traceback mid-run (4.57.1: ImportError of modeling_bert's
eager_attention_forward) or a message blaming the model folder (4.46.0)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loratune import versions
from loratune.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def _pyproject_floor(dist: str) -> str:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    deps = text[text.index("dependencies = ["):text.index("]", text.index("dependencies = ["))]
    found = re.findall(rf'"{dist}>=([\w.]+)"', deps)
    assert len(found) == 1, f"pyproject.toml names {dist} with a floor once: {found}"
    return found[0]


def test_pyproject_floor_is_the_checked_floor():
    assert _pyproject_floor("transformers") == versions.TRANSFORMERS_FLOOR


@pytest.mark.parametrize("found", ["4.57.1", "4.46.0", "5.0.0", "5.1.0.dev0", "5.1.0rc1", "5.1.0a2"])
def test_a_too_old_transformers_is_refused_naming_the_floor_and_the_install(monkeypatch, found):
    monkeypatch.setattr(versions, "installed", lambda dist: {"transformers": found}[dist])
    with pytest.raises(UserError) as err:
        versions.require_transformers()
    floor = versions.TRANSFORMERS_FLOOR
    assert err.value.problem == f"loratune needs transformers >= {floor} (found {found})"
    assert err.value.fix == f"pip install -U 'transformers>={floor}'"


@pytest.mark.parametrize("found", ["5.1.0", "5.1", "5.1.1.dev0", "5.1.0.post1", "5.1.0+local", "5.23.0", "6.0",
                                   "not-a-version"])
def test_the_floor_and_newer_pass(monkeypatch, found):
    monkeypatch.setattr(versions, "installed", lambda dist: found)
    versions.require_transformers()


def test_the_comparison_is_pips():
    # PEP 440: pre-releases and dev releases of 5.1 come before 5.1 (pip's `transformers>=5.1` skips them)
    assert versions.below_floor("5.1.0.dev0") and versions.below_floor("5.1.0rc1")
    assert not versions.below_floor("5.10.0") and versions.below_floor("5.0.99")
    assert not versions.below_floor("5.1.0")


def test_a_transformers_without_dist_info_is_let_through(monkeypatch):
    # a source checkout on PYTHONPATH or a bundled app: importable, but no metadata to read a version from
    monkeypatch.setattr(versions, "installed", lambda dist: None)
    assert versions.importable("transformers")  # the real one, found without metadata being consulted
    versions.require_transformers()  # no UserError: its version is unknown, not 'none installed'


def test_no_transformers_at_all_is_still_refused(monkeypatch):
    monkeypatch.setattr(versions, "installed", lambda dist: None)
    monkeypatch.setattr(versions, "importable", lambda module: False)
    with pytest.raises(UserError, match=r"\(found none installed\)"):
        versions.require_transformers()


def test_one_version_comparison_for_the_floor_and_the_trainers_lr_clock():
    """Two parsers: store.trainer_logs_next_lr read 4.51.0.dev0 as 4.51 (a regex) while below_floor read PEP 440
    (review of the integrated branch). versions.older_than is the one comparison: a dev build of 4.51 may predate the
    change (transformers #36973), so it reads as older, as pip orders it."""
    from loratune.store import TRAINER_LR_CLOCK_SINCE, trainer_logs_next_lr

    assert trainer_logs_next_lr("4.51.0.dev0") and trainer_logs_next_lr("4.51.0rc1")
    assert versions.older_than("4.51.0.dev0", TRAINER_LR_CLOCK_SINCE) and versions.older_than("5.1.0.dev0", "5.1")
    assert not trainer_logs_next_lr("4.51.0") and not trainer_logs_next_lr("4.51.0.post1")
    assert trainer_logs_next_lr("v4.50.3") and trainer_logs_next_lr("4.46.3-custom")  # leading release numbers
    assert [versions.older_than(v, (4, 51)) for v in (None, 4.5, "x", "")] == [False] * 4  # not judged
    assert versions.below_floor("5.0.99") and not versions.below_floor("not-a-version")
