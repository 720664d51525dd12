"""The documented configuration matches the code: docs/run-record.md's key table names every field of the config
dataclasses with its default (keys like adapter.use_dora or data.test_file were documented nowhere), and the README's
sample of a refused configuration is what `loratune train` prints."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from loratune.cli import main
from loratune.config import RunConfig

from support import flat

ROOT = Path(__file__).resolve().parents[2]


def _documented() -> dict[str, str]:
    """key -> default as written in the `config.yaml: every key` table."""
    text = (ROOT / "docs" / "run-record.md").read_text(encoding="utf-8")
    section = text[text.index("## config.yaml: every key"):]
    section = section[:section.index("\n## ", 1)]
    return dict(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \| `([^`]*)` \|", section, re.M))


def _written(value) -> str:
    """A default as the table writes it (YAML's spelling)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def test_every_config_field_is_in_the_key_reference_with_its_default():
    cfg, documented = RunConfig(), _documented()
    fields = {f"{sec.name}.{f.name}": _written(getattr(getattr(cfg, sec.name), f.name))
              for sec in dataclasses.fields(RunConfig) for f in dataclasses.fields(getattr(cfg, sec.name))}
    assert set(fields) - set(documented) == set(), "config keys missing from docs/run-record.md"
    assert set(documented) - set(fields) == set(), "docs/run-record.md documents keys the config lacks"
    assert {k: v for k, v in fields.items() if documented[k] != v} == {}, "defaults differ from the code's"
    for key in ("adapter.use_dora", "train.loraplus_lr_ratio", "data.test_file", "train.early_stopping_threshold"):
        assert key in documented


def test_the_readme_sample_of_a_refused_configuration_is_what_train_prints(capsys):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```\n\$ loratune (train [^\n]*)\n(.*?)```", text, re.S)
    assert main(block.group(1).split()) == 2
    err = capsys.readouterr().err
    assert flat(block.group(2)) == flat(err)  # (flat: rich may wrap a line at the terminal's width)


def test_the_prompt_set_row_names_every_prompt_set_score_a_run_writes():
    """docs/run-record.md's `val/prompt_<group>_<metric>` row listed exact_match ... empty, not `capped`, which a
    causal-lm run with data.prompt_set writes beside them (generation.score_prompt_set writes every SCORES key)."""
    from loratune.objectives import SCORES

    text = (ROOT / "docs" / "run-record.md").read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `val/prompt_<group>_<metric>` |"))
    listed = row[row.index("metrics "):row.index("the format is")]
    assert set(re.findall(r"`([a-z_]+)`", listed)) == set(SCORES)
