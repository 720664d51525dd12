"""Config and --thresholds files read one way (config.read_yaml_file), and the command line's config arguments:
each key given once, merge keys, `~`, names that other tools use."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from loratune.config import ConfigError, load_config, load_yaml, resolve_key
from loratune.errors import UserError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def problems(path, overrides=()):
    with pytest.raises(ConfigError) as err:
        load_config(path, list(overrides))
    return err.value.problems


@pytest.mark.parametrize("text,first,second", [
    ("adapter.r: 4\nadapter:\n  r: 8\n", "adapter.r", "r under adapter:"),  # was r 8, exit 0
    ("adapter:\n  r: 8\nadapter.r: 4\n", "r under adapter:", "adapter.r"),  # was r 4
])
def test_a_key_given_dotted_and_in_its_section_is_refused(tmp_path, text, first, second):
    assert problems(write(tmp_path, text)) == [
        f"adapter.r: the file gives adapter.r twice ({first} and {second}); keep one of them"]


def test_merge_keys_work_as_in_safe_load_and_duplicates_are_still_refused(tmp_path):
    # (was "not valid YAML": the keys were built before `<<` was resolved)
    cfg = load_config(write(tmp_path, "adapter:\n  <<: {r: 4, lora_alpha: 8}\n  r: 2\ntrain:\n  seed: 3\n"))
    assert (cfg.adapter.r, cfg.adapter.lora_alpha, cfg.train.seed) == (2, 8.0, 3)
    # an anchored mapping that merged and overrode a key is merged again: no false duplicate
    assert load_yaml("a: &a {x: 1}\nb: &b {<<: *a, x: 2}\nc: {<<: *b, y: 3}\n")["c"] == {"x": 2, "y": 3}
    with pytest.raises(UserError, match="duplicate key 'r'"):
        load_config(write(tmp_path, "adapter:\n  <<: {r: 4}\n  r: 2\n  r: 3\n"))
    with pytest.raises(UserError, match="duplicate key 'r'"):
        load_config(write(tmp_path, "adapter:\n  <<: {r: 4, r: 5}\n"))


def test_top_level_keys_starting_with_x_or_dot_hold_anchors_for_merges(tmp_path):
    from loratune.commands.tune import _explicit_keys
    from loratune.rules import read_threshold_file

    text = ("x-common: &c {learning_rate: 0.002, seed: 5}\n.lora: &l {r: 4}\ntrain: {<<: *c, seed: 4}\n"
            "adapter: {<<: *l}\n")
    cfg = load_config(write(tmp_path, text))  # (was "unknown config key 'x-common'")
    assert (cfg.train.learning_rate, cfg.train.seed, cfg.adapter.r) == (0.002, 4, 4)
    args = SimpleNamespace(data=None, overrides=[], config=str(tmp_path / "c.yaml"))
    assert _explicit_keys(args, resolve_key) == {"train.learning_rate", "train.seed", "adapter.r"}
    th = write(tmp_path, "x-d: &d 3\nthresholds:\n  diverged_loss_ratio: *d\n", "th.yaml")
    assert read_threshold_file(th) == {"diverged_loss_ratio": 3}
    # any other name holding the anchor is an unknown key, and the refusal says how to write it
    [said] = problems(write(tmp_path, "defaults: &d {learning_rate: 0.002}\ntrain: {<<: *d}\n"))
    assert said.startswith("defaults: unknown config key 'defaults' (")
    assert said.endswith("a mapping kept only as an anchor for `<<:` merges goes under a key starting with x- or ., "
                         "which is not read (`x-defaults: &defaults {...}`))")
    # a '.' name holding no mapping is a typo, not an anchor: read, and refused with its hint (was dropped silently)
    [said] = problems(write(tmp_path, ".learning_rate: 0.5\n"))
    assert said == ".learning_rate: unknown config key '.learning_rate' (did you mean train.learning_rate?)"
    from loratune.rules import load_thresholds

    with pytest.raises(UserError) as err:
        load_thresholds(write(tmp_path, ".diverged_loss_ratio: 3\n", "th2.yaml"))
    assert "unknown threshold '.diverged_loss_ratio'" in str(err.value)


@pytest.mark.parametrize("text,kind", [("? [a, b]\n: 2\n", "list"), ("? {a: 1}\n: 2\n", "mapping")])
def test_a_key_that_is_a_list_or_mapping_is_a_user_error(tmp_path, text, kind):
    with pytest.raises(UserError) as err:  # (was TypeError: unhashable type)
        load_config(write(tmp_path, text))
    assert f"a key that is a {kind} (line 1)" in err.value.problem
    assert "`key: value` lines" in err.value.fix


@pytest.mark.parametrize("key,meant", [("lr", "train.learning_rate"), ("epochs", "train.num_train_epochs"),
                                       ("batch_size", "train.per_device_train_batch_size"),
                                       ("LR", "train.learning_rate")])
def test_other_tools_names_suggest_loratunes_key_never_taken(key, meant):
    with pytest.raises(UserError) as err:  # lr suggested `r` (the rank); epochs, batch_size nothing
        resolve_key(key)
    assert err.value.fix == f"did you mean {meant}?"
    resolve_key(meant)  # every alias names a real key


@pytest.mark.parametrize("key,meant", [("train.lr", "train.learning_rate"), ("adapter.lora_rank", "adapter.r"),
                                       ("lora_rank", "adapter.r"), ("adapter.lr", "train.learning_rate"),
                                       ("train.epochs", "train.num_train_epochs"), ("train.r", "adapter.r"),
                                       ("data.seed", "train.seed")])
def test_a_dotted_keys_last_part_is_looked_up_too(key, meant):
    with pytest.raises(UserError) as err:  # train.lr said train.slices, adapter.lr adapter.r (the rank)
        resolve_key(key)
    assert err.value.fix == f"did you mean {meant}?"


def test_aliases_in_a_files_sections_are_suggested(tmp_path):
    text = "train:\n  lr: 0.001\n  epochs: 3\nadapter:\n  lora_rank: 4\n"
    assert problems(write(tmp_path, text)) == [
        "train.lr: unknown config key 'train.lr' (did you mean train.learning_rate?)",
        "train.epochs: unknown config key 'train.epochs' (did you mean train.num_train_epochs?)",
        "adapter.lora_rank: unknown config key 'adapter.lora_rank' (did you mean adapter.r?)"]


def test_every_alias_names_a_key():
    from loratune.config import KEY_ALIASES, key_table

    assert set(KEY_ALIASES.values()) <= set(key_table())
    for alias in KEY_ALIASES:
        with pytest.raises(UserError):
            resolve_key(alias)  # an alias is never a key itself (it would be taken, not suggested)


def test_load_configs_example_override_is_a_key():
    with pytest.raises(UserError) as err:
        load_config(None, "r=16")
    for example in err.value.fix.split("'")[1::2]:
        resolve_key(example.split("=")[0])


def test_tune_reads_a_config_path_with_a_tilde(tmp_path, monkeypatch):
    from loratune.commands.tune import _explicit_keys

    monkeypatch.setenv("HOME", str(tmp_path))
    write(tmp_path, "adapter.r: 4\ntrain:\n  seed: 3\n")
    args = SimpleNamespace(data=None, overrides=["lora_alpha=8"], config="~/c.yaml")  # was FileNotFoundError
    assert _explicit_keys(args, resolve_key) == {"adapter.r", "train.seed", "adapter.lora_alpha"}


def test_a_second_config_option_is_refused(capsys):
    from loratune.commands._common import add_config_args

    p = argparse.ArgumentParser(prog="t")
    add_config_args(p)
    assert p.parse_args(["-c", "a.yaml"]).config == "a.yaml"
    with pytest.raises(SystemExit) as exit_:  # (the first was silently dropped)
        p.parse_args(["-c", "a.yaml", "--config", "b.yaml"])
    assert exit_.value.code == 2
    assert "--config given twice ('a.yaml' and 'b.yaml')" in capsys.readouterr().err


@pytest.mark.parametrize("argv,said", [
    (["rules", "--thresholds", "a.yaml", "--thresholds", "b.yaml"], "--thresholds given twice ('a.yaml' and 'b.yaml'): "
     "give one file (put every name into it"),
    (["diagnose", "run", "--thresholds", "a.yaml", "--thresholds=b.yaml"], "--thresholds given twice"),
    (["assess", "--thresholds", "a.yaml", "--thresholds", "b.yaml"], "--thresholds given twice"),
    (["tune", "--thresholds", "a.yaml", "--thresholds", "b.yaml"], "--thresholds given twice"),
    (["train", "--data", "d1", "--data", "d2"], "--data given twice ('d1' and 'd2'): give one data folder or hub "
     "dataset id"),
    (["assess", "--data", "d1", "--data", "d2"], "--data given twice"),
    (["train", "-c", "a.yaml", "-c", "b.yaml"], "-c given twice ('a.yaml' and 'b.yaml'): give one file (copy the "
     "other's keys"),
])
def test_a_single_valued_option_given_twice_is_refused_in_its_own_words(argv, said, capsys):
    from loratune.cli import build_parser

    with pytest.raises(SystemExit) as exit_:  # (the first --thresholds file, the first --data, was silently dropped)
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert said in capsys.readouterr().err


def test_threshold_files_are_read_as_config_files(tmp_path):
    from loratune.rules import read_threshold_file
    from loratune.thresholds import load_threshold_tables

    with pytest.raises(UserError, match="duplicate key 'diverged_loss_ratio'"):  # (the last silently won)
        read_threshold_file(write(tmp_path, "diverged_loss_ratio: 2\ndiverged_loss_ratio: 3\n"))
    with pytest.raises(UserError) as err:  # (the top-level name was silently dropped)
        read_threshold_file(write(tmp_path, "diverged_loss_ratio: 3\nthresholds:\n  diverged_chance_ratio: 4\n"))
    assert "gives diverged_loss_ratio beside its `thresholds:` section" in err.value.problem
    with pytest.raises(UserError, match="bogus2"):  # an unknown name beside the section: named, not dropped
        load_threshold_tables(write(tmp_path, "thresholds:\n  diverged_chance_ratio: 4\nbogus2: 5\n"))
    assert read_threshold_file(write(tmp_path, "thresholds:\n  diverged_chance_ratio: 4\n")) == {
        "diverged_chance_ratio": 4}
    assert read_threshold_file(write(tmp_path, "diverged_chance_ratio: 4\n")) == {"diverged_chance_ratio": 4}
