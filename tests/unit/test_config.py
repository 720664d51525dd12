"""Config: YAML + overrides -> frozen, typed, validated RunConfig; every problem reported at once."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest

from loratune.objectives import CLASSIFIER_METRICS
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from loratune import config as C
from loratune.config import (
    AdapterConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    build_config,
    cross_checks,
    key_table,
    load_config,
    parse_layers,
    parse_value,
    replace,
    resolve_key,
    to_dict,
    to_yaml,
)
from loratune.errors import ConfigError, UserError


def problems_of(overrides: list[str], path=None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value.problems


def task_of(dotted: str) -> list[str]:
    """The model.task override a key needs to be read at all (config.TASK_ONLY_KEYS), and the optimizer LoRA+'s
    ratio needs (set otherwise it is refused: nothing reads it)."""
    owner = C.TASK_ONLY_KEYS.get(dotted, "classification")
    return (([] if owner == "classification" else [f"model.task={owner}"])
            + (["train.optimizer=loraplus"] if dotted == "train.loraplus_lr_ratio" else []))


def write(tmp_path, text: str, name: str = "c.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------
# the field table itself


def test_every_field_has_help_text_and_the_issue_keys_exist():
    table = key_table()
    assert all(f.metadata["help"].strip() for f in table.values())
    bare = {k.split(".", 1)[1] for k in table}
    issue_keys = {"r", "lora_alpha", "lora_dropout", "target_modules", "layers_to_transform", "bias",
                  "use_rslora", "init_lora_weights", "learning_rate", "num_train_epochs",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay",
                  "warmup_ratio", "lr_scheduler_type", "seed", "output_dir"}
    assert issue_keys <= bare


def test_defaults_are_valid_and_load_config_without_input_gives_them():
    assert load_config() == RunConfig()
    assert cross_checks(RunConfig()) == []
    assert RunConfig().adapter.target_modules == ("attn.q", "attn.v", "ffn@top:2")


# ---------------------------------------------------------------------------------------------
# every constraint's message, table-driven over the fields' metadata


def _constrained(kind: str) -> list[tuple[str, dataclasses.Field]]:
    return [(k, f) for k, f in key_table().items() if f.metadata.get(kind) is not None]


def _is_int_field(dotted: str) -> bool:
    section, name = dotted.split(".")
    hint = str(typing_hints(section)[name])
    return "int" in hint and "tuple" not in hint


def typing_hints(section: str) -> dict:
    import typing

    return typing.get_type_hints(C._SECTION_CLASSES[section])


def _range_text(dotted: str, meta: dict) -> str:
    parts = []
    if meta["min"] is not None:
        parts.append(f"{'>' if meta['min_exclusive'] else '>='} {meta['min']}")
    if meta["max"] is not None:
        parts.append(f"<= {meta['max']}")
    parts.extend(f"not {x}" for x in meta["excluded"])
    kind = "an integer" if _is_int_field(dotted) else "a number"
    return f"{kind} {' and '.join(parts)}"


def test_the_constraint_tables_are_not_empty():
    # guards the parametrisations below against silently testing nothing
    assert len(_constrained("choices")) >= 4
    assert len(_constrained("min")) >= 15
    assert len(_constrained("max")) >= 6


@pytest.mark.parametrize("dotted,f", _constrained("choices"), ids=lambda x: x if isinstance(x, str) else "")
def test_a_value_outside_choices_lists_the_choices(dotted, f):
    problems = problems_of([f"{dotted}=bogus"])
    assert problems == [f"{dotted}: got 'bogus'; allowed: one of {', '.join(map(str, f.metadata['choices']))}"]


@pytest.mark.parametrize("dotted,f", _constrained("choices"), ids=lambda x: x if isinstance(x, str) else "")
def test_every_choice_is_accepted(dotted, f):
    section, name = dotted.split(".")
    for choice in f.metadata["choices"]:
        context = task_of(dotted)
        if dotted == "train.metric_for_best_model" and choice not in CLASSIFIER_METRICS + ("auto",):
            context = ["task=causal-lm", "prompt_set=p.jsonl"]  # the objectives only a causal-lm run computes
        cfg = load_config(None, context + [f"{dotted}={choice}"])
        assert getattr(getattr(cfg, section), name) == choice


@pytest.mark.parametrize("dotted,f", _constrained("min"), ids=lambda x: x if isinstance(x, str) else "")
def test_a_value_below_the_minimum_states_the_range(dotted, f):
    meta = f.metadata
    lo = meta["min"]
    bad = lo if meta["min_exclusive"] else lo - 1
    if _is_int_field(dotted):
        bad = int(bad)
    problems = problems_of([f"{dotted}={bad}"])
    assert problems == [f"{dotted}: got {bad!r}; allowed: {_range_text(dotted, meta)}"]


@pytest.mark.parametrize("dotted,f", _constrained("min"), ids=lambda x: x if isinstance(x, str) else "")
def test_the_minimum_itself_is_accepted_unless_exclusive(dotted, f):
    meta = f.metadata
    if meta["min_exclusive"]:
        ok = meta["min"] + 1e-6
    else:
        ok = int(meta["min"]) if _is_int_field(dotted) else meta["min"]
    section, name = dotted.split(".")
    cfg = load_config(None, task_of(dotted) + [f"{dotted}={ok}"])
    assert getattr(getattr(cfg, section), name) == ok


@pytest.mark.parametrize("dotted,f", _constrained("max"), ids=lambda x: x if isinstance(x, str) else "")
def test_a_value_above_the_maximum_states_the_whole_range(dotted, f):
    meta = f.metadata
    bad = meta["max"] + 1
    if _is_int_field(dotted):
        bad = int(bad)
    problems = problems_of([f"{dotted}={bad}"])
    assert problems == [f"{dotted}: got {bad!r}; allowed: {_range_text(dotted, meta)}"]
    section, name = dotted.split(".")
    at_max = load_config(None, task_of(dotted) + [f"{dotted}={meta['max']}"])
    assert getattr(getattr(at_max, section), name) == meta["max"]


@pytest.mark.parametrize("dotted,value,message", [
    ("adapter.r", "0", "adapter.r: got 0; allowed: an integer >= 1 and <= 4096"),
    ("adapter.r", "5000", "adapter.r: got 5000; allowed: an integer >= 1 and <= 4096"),
    ("train.learning_rate", "0", "train.learning_rate: got 0.0; allowed: a number > 0.0 and <= 1.0"),
    ("train.learning_rate", "2", "train.learning_rate: got 2.0; allowed: a number > 0.0 and <= 1.0"),
    ("data.validation_fraction", "0.6", "data.validation_fraction: got 0.6; allowed: a number > 0.0 and <= 0.5"),
    ("train.max_steps", "-2", "train.max_steps: got -2; allowed: an integer >= -1 and not 0"),
    # 0 trained the epoch count (as -1) though the help named only -1 for that
    ("train.max_steps", "0", "train.max_steps: got 0; allowed: an integer >= -1 and not 0"),
    # numpy's seeding (train) and Optuna's samplers (tune) take no larger seed: a traceback after the data loaded
    ("train.seed", "4294967296", "train.seed: got 4294967296; allowed: an integer >= 0 and <= 4294967295"),
    ("train.lr_scheduler_type", "step", "train.lr_scheduler_type: got 'step'; allowed: one of linear, cosine, "
                                        "constant"),
    ("adapter.bias", "some", "adapter.bias: got 'some'; allowed: one of none, all, lora_only"),
])
def test_exact_messages_for_familiar_keys(dotted, value, message):
    assert problems_of([f"{dotted}={value}"]) == [message]


# ---------------------------------------------------------------------------------------------
# types and coercion


@pytest.mark.parametrize("override,message", [
    ("r=abc", "adapter.r: got 'abc'; allowed: an integer"),
    ("r=2.5", "adapter.r: got 2.5; allowed: an integer"),
    ("r=true", "adapter.r: got True; allowed: an integer"),
    ("use_rslora=1", "adapter.use_rslora: got 1; allowed: true or false"),
    ("learning_rate=fast", "train.learning_rate: got 'fast'; allowed: a finite number"),
    ("learning_rate=true", "train.learning_rate: got True; allowed: a finite number"),
    ("weight_decay=nan", "train.weight_decay: got 'nan'; allowed: a finite number"),
    ("weight_decay=.nan", None),  # YAML's nan: a float nan; checked below
    ("num_train_epochs=.inf", "train.num_train_epochs: got inf; allowed: a finite number"),
    ("lora_alpha=1e400", "adapter.lora_alpha: got '1e400'; allowed: a finite number"),
    ("eval_steps=often", "train.eval_steps: got 'often'; allowed: an integer or null"),
    ("multi_label=maybe", "data.multi_label: got 'maybe'; allowed: true or false or null"),
    ("name_or_path=null", "model.name_or_path: got None; allowed: a string"),
    ("target_modules=5", "adapter.target_modules: got 5; allowed: a list of strings"),
    ("target_modules=[[a]]", "adapter.target_modules: got [['a']]; allowed: a list of strings"),
    ("layers_to_transform={a: 1}", "adapter.layers_to_transform: got {'a': 1}; allowed: a string or a list of "
                                   "integers"),
    ("layers_to_transform=[0, x]", "adapter.layers_to_transform: got [0, 'x']; allowed: a string or a list of "
                                   "integers"),
])
def test_wrong_types_name_key_value_and_allowed_type(override, message):
    problems = problems_of([override])
    assert len(problems) == 1
    if message is None:
        assert problems[0].startswith("train.weight_decay: got nan; allowed: a finite number")
    else:
        assert problems[0] == message


@pytest.mark.parametrize("override,dotted,expected", [
    ("r=3.0", "adapter.r", 3),
    ("max_length=128.0", "model.max_length", 128),
    ("learning_rate=1e-3", "train.learning_rate", 1e-3),
    ("learning_rate=2E-4", "train.learning_rate", 2e-4),
    ("lora_alpha=32", "adapter.lora_alpha", 32.0),
    ("num_train_epochs=0.5", "train.num_train_epochs", 0.5),
    ("target_modules=attn.q,attn.v", "adapter.target_modules", ("attn.q", "attn.v")),
    ("target_modules= attn.q ,  ffn ", "adapter.target_modules", ("attn.q", "ffn")),
    ("target_modules=attn", "adapter.target_modules", ("attn",)),
    ("target_modules=[attn.q, ffn@top:2]", "adapter.target_modules", ("attn.q", "ffn@top:2")),
    ("layers_to_transform=[0, 3]", "adapter.layers_to_transform", (0, 3)),
    ("layers_to_transform=[0.0, 3]", "adapter.layers_to_transform", (0, 3)),
    ("layers_to_transform=0,3", "adapter.layers_to_transform", "0,3"),
    ("layers_to_transform=top:2", "adapter.layers_to_transform", "top:2"),
    ("layers_to_transform=2", "adapter.layers_to_transform", "2"),
    ("text_column=42", "data.text_column", "42"),
    ("use_rslora=yes", "adapter.use_rslora", True),
    ("eval_steps=null", "train.eval_steps", None),
    ("eval_steps=50", "train.eval_steps", 50),
    ("multi_label=false", "data.multi_label", False),
    ("label_delimiter=#", "data.label_delimiter", "#"),
    ("output_dir=runs/a=b", "train.output_dir", "runs/a=b"),
    (" r = 16 ", "adapter.r", 16),
])
def test_values_are_coerced_to_the_field_type(override, dotted, expected):
    section, name = dotted.split(".")
    value = getattr(getattr(load_config(None, [override]), section), name)
    assert value == expected
    assert type(value) is type(expected)


def test_yaml_file_values_are_coerced_too(tmp_path):
    # PyYAML reads `1e-3` (no dot) as a string; it must still become a float
    p = write(tmp_path, "learning_rate: 1e-3\nr: 4.0\ntarget_modules: attn.q, attn.v\nlayers_to_transform: [1, 2]\n")
    cfg = load_config(p)
    assert cfg.train.learning_rate == 0.001 and isinstance(cfg.train.learning_rate, float)
    assert cfg.adapter.r == 4 and isinstance(cfg.adapter.r, int)
    assert cfg.adapter.target_modules == ("attn.q", "attn.v")
    assert cfg.adapter.layers_to_transform == (1, 2)


# ---------------------------------------------------------------------------------------------
# keys: bare names, unknown keys, ambiguity, malformed overrides


@pytest.mark.parametrize("key,dotted", [
    ("r", "adapter.r"), ("seed", "train.seed"), ("train.seed", "train.seed"),
    ("text_column", "data.text_column"), ("max_length", "model.max_length"),
    ("adapter.target_modules", "adapter.target_modules"),
])
def test_resolve_key(key, dotted):
    assert resolve_key(key) == dotted


def test_every_bare_name_resolves_to_its_dotted_key():
    for dotted in key_table():
        assert resolve_key(dotted.split(".", 1)[1]) == dotted
        assert resolve_key(dotted) == dotted


@pytest.mark.parametrize("key,suggested", [
    ("lerning_rate", "learning_rate"), ("lora_aplha", "lora_alpha"), ("adapter.rr", "adapter.r"),
    ("train.sed", "train.seed"), ("target_module", "target_modules"),
])
def test_unknown_key_suggests_close_matches(key, suggested):
    with pytest.raises(UserError) as info:
        resolve_key(key)
    assert info.value.problem == f"unknown config key '{key}'"
    assert info.value.fix.startswith("did you mean ")
    assert suggested in info.value.fix.removeprefix("did you mean ").rstrip("?").split(", ")


def test_unknown_key_without_close_match_points_at_dry_run():
    with pytest.raises(UserError) as info:
        resolve_key("zzqxj")
    assert "--dry-run" in info.value.fix


@dataclass(frozen=True)
class _Other:
    seed: int = C._f(1, "a second seed, to make `seed` ambiguous")


def test_a_bare_key_in_two_sections_is_ambiguous(monkeypatch):
    monkeypatch.setitem(C._SECTION_CLASSES, "other", _Other)
    with pytest.raises(UserError) as info:
        resolve_key("seed")
    assert info.value.problem == "key 'seed' is ambiguous"
    assert info.value.fix == "write one of: train.seed, other.seed"
    assert resolve_key("other.seed") == "other.seed"


def test_unknown_keys_from_yaml_and_overrides_are_reported_with_the_rest(tmp_path):
    p = write(tmp_path, "lerning_rate: 0.1\nadapter:\n  rr: 3\n")
    problems = problems_of(["bogus_key=1", "r=0", "no-equals-sign"], p)
    assert len(problems) == 5
    assert problems[0].startswith("lerning_rate: unknown config key 'lerning_rate' (did you mean ")
    assert problems[1].startswith("adapter.rr: unknown config key 'adapter.rr'")
    assert problems[2].startswith("bogus_key: unknown config key 'bogus_key'")
    assert problems[3] == "override 'no-equals-sign' is not of the form key=value (e.g. r=16)"
    assert problems[4] == "adapter.r: got 0; allowed: an integer >= 1 and <= 4096"


def test_every_problem_is_reported_at_once_including_cross_checks():
    overrides = ["r=0", "bias=some", "learning_rate=2", "use_rslora=1", "layers_to_transform=top:0",
                 "target_modules=ffn@nope"]
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    problems = info.value.problems
    assert [p.split(":", 1)[0] for p in problems] == [
        "adapter.r", "adapter.bias", "train.learning_rate", "adapter.use_rslora",
        "adapter.layers_to_transform", "adapter.target_modules"]
    text = str(info.value)
    assert text.startswith("invalid configuration (6 problem(s)):")
    assert all(f"  - {p}" in text for p in problems)
    assert isinstance(info.value, UserError)


def test_build_config_reports_unknown_keys_instead_of_crashing():
    with pytest.raises(ConfigError) as info:
        build_config({"bogus.x": 1, "adapter.r": 0})
    assert len(info.value.problems) == 2
    assert info.value.problems[0].startswith("bogus.x: unknown config key 'bogus.x'")
    assert build_config({"r": 4}).adapter.r == 4


def test_overrides_win_over_the_file_and_later_overrides_win(tmp_path):
    p = write(tmp_path, "adapter:\n  r: 4\n")
    assert load_config(p, ["r=8"]).adapter.r == 8
    assert load_config(p, ["r=8", "adapter.r=2"]).adapter.r == 2
    assert load_config(p).adapter.r == 4


@pytest.mark.parametrize("text,expected", [
    ("1e-3", "1e-3"),  # YAML 1.1: no dot -> string; the float field coerces it
    ("1.0e-3", 0.001), ("16", 16), ("true", True), ("no", False), ("null", None), ("", ""),
    ("[attn.q, attn.v]", ["attn.q", "attn.v"]), ("top:2", "top:2"), ("{", "{"), ("a: b", {"a": "b"}),
    ("#", "#"), ("a #b", "a #b"), ("a#b", "a#b"), ("'#'", "#"),  # `#` is the delimiter, never a comment
    ("|", "|"), (">", ">"), ("!", "!"), ("-", "-"), ("?", "?"), (",", ","), ("~", None), ("''", ""),  # the char
])
def test_parse_value(text, expected):
    assert parse_value(text) == expected


def test_a_delimiter_given_as_a_yaml_indicator_is_kept_and_an_empty_one_refused(tmp_path):
    """`label_delimiter=|` became '' (YAML's block indicator), and '' turned single-label data multi-label."""
    assert load_config(None, ["label_delimiter=|"]).data.label_delimiter == "|"
    for bad in ("label_delimiter=", "label_delimiter=' '"):
        with pytest.raises(ConfigError, match="data.label_delimiter: got"):
            load_config(None, [bad])


def test_a_key_given_flat_and_in_its_section_of_one_file_is_refused(tmp_path):
    p = write(tmp_path, "r: 4\nadapter:\n  r: 16\n")
    with pytest.raises(ConfigError, match="gives adapter.r twice"):
        load_config(p)


# ---------------------------------------------------------------------------------------------
# YAML files


def test_nested_flat_and_dotted_yaml_give_the_same_config(tmp_path):
    nested = write(tmp_path, "adapter:\n  r: 16\n  bias: all\ntrain:\n  seed: 7\n", "a.yaml")
    flat = write(tmp_path, "r: 16\nbias: all\nseed: 7\n", "b.yaml")
    dotted = write(tmp_path, "adapter.r: 16\nadapter.bias: all\ntrain.seed: 7\n", "c.yaml")
    mixed = write(tmp_path, "adapter:\n  r: 16\nbias: all\ntrain.seed: 7\n", "d.yaml")
    expected = replace(RunConfig(), r=16, bias="all", seed=7)
    assert {load_config(p) for p in (nested, flat, dotted, mixed)} == {expected}
    assert expected.adapter.r == 16 and expected.train.seed == 7


@pytest.mark.parametrize("text", ["", "# only a comment\n", "adapter:\ntrain:\n"])
def test_empty_file_and_empty_sections_give_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text)) == RunConfig()


def test_a_section_that_is_not_a_mapping_is_a_problem(tmp_path):
    problems = problems_of([], write(tmp_path, "adapter: 8\ntrain: [1, 2]\n"))
    assert problems == ["adapter: got 8; allowed: a mapping of adapter keys (e.g. `adapter: {...}`)",
                        "train: got [1, 2]; allowed: a mapping of train keys (e.g. `train: {...}`)"]


@pytest.mark.parametrize("text", ["adapter: [1, 2\n", "r: 8\n  bias: : none\n", "a: 'unclosed\n"])
def test_yaml_syntax_error_names_the_file(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_config(p)
    assert not isinstance(info.value, ConfigError)
    assert info.value.problem.startswith(f"config file '{p}' is not valid YAML: ")
    assert info.value.fix == "fix the YAML syntax"


def test_non_utf8_yaml_is_reported(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes("output_dir: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(UserError) as info:
        load_config(p)
    assert f"config file '{p}' is not valid YAML" in info.value.problem


@pytest.mark.parametrize("text", ["- r: 8\n- seed: 1\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_config(p)
    assert info.value.problem == f"config file '{p}' must hold a mapping of keys"
    assert info.value.fix == "write `key: value` lines"


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml' does not exist" in info.value.problem


# ---------------------------------------------------------------------------------------------
# frozen-ness, replace, to_yaml round trip


def test_configs_are_frozen():
    cfg = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.adapter.r = 4  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train = TrainConfig()  # type: ignore[misc]
    for cls in (RunConfig, ModelConfig, DataConfig, AdapterConfig, TrainConfig):
        assert cls.__dataclass_params__.frozen
    assert hash(cfg) == hash(load_config())


def test_replace_validates_and_leaves_the_original_alone():
    cfg = load_config()
    new = replace(cfg, r=16, **{"train.learning_rate": "5e-4"})
    assert (new.adapter.r, new.train.learning_rate) == (16, 5e-4)
    assert (cfg.adapter.r, cfg.train.learning_rate) == (8, 1e-3)
    assert new.model == cfg.model and new.data == cfg.data
    with pytest.raises(ConfigError) as info:
        replace(cfg, r=0)
    assert info.value.problems == ["adapter.r: got 0; allowed: an integer >= 1 and <= 4096"]
    with pytest.raises(UserError):
        replace(cfg, bogus=1)


def test_to_yaml_writes_nested_sections_with_lists():
    cfg = replace(load_config(), layers_to_transform=[0, 3])
    data = yaml.safe_load(to_yaml(cfg))
    assert list(data) == ["model", "data", "adapter", "train"]
    assert data["adapter"]["layers_to_transform"] == [0, 3]
    assert data["adapter"]["target_modules"] == ["attn.q", "attn.v", "ffn@top:2"]
    assert data["train"]["eval_steps"] is None
    assert data == to_dict(cfg)


@pytest.mark.parametrize("overrides", [
    [],
    ["r=64", "lora_alpha=128", "layers_to_transform=[0, 5]", "target_modules=[attn, ffn@0,1]",
     "use_rslora=true", "init_lora_weights=pissa", "bias=lora_only"],
    ["method=full", "target_modules=[]"],
    ["learning_rate=1e-7", "eval_steps=25", "num_threads=2", "multi_label=true", "label_delimiter=#",
     "gguf_file=model.gguf", "output_dir=123", "text_column=null_text", "max_train_samples=100",
     "validation_fraction=0.5", "lr_scheduler_type=cosine", "num_train_epochs=0.25"],
])
def test_to_yaml_round_trips_through_load_config(tmp_path, overrides):
    cfg = load_config(None, overrides)
    assert load_config(write(tmp_path, to_yaml(cfg))) == cfg


@pytest.fixture(scope="module")
def prop_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prop")


@settings(max_examples=60, deadline=None)
@given(
    r=st.integers(1, 4096),
    lr=st.floats(0.0, 1.0, exclude_min=True, allow_nan=False, allow_infinity=False),
    alpha=st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False),
    layers=st.one_of(st.just("all"), st.integers(1, 48).map(lambda k: f"top:{k}"),
                     st.lists(st.integers(0, 47), min_size=1, max_size=6).map(tuple)),
)
def test_property_valid_configs_round_trip_through_yaml(prop_dir, r, lr, alpha, layers):
    cfg = replace(RunConfig(), r=r, learning_rate=lr, lora_alpha=alpha, layers_to_transform=layers)
    assert (cfg.adapter.r, cfg.train.learning_rate, cfg.adapter.lora_alpha) == (r, lr, alpha)
    p = prop_dir / "c.yaml"
    p.write_text(to_yaml(cfg), encoding="utf-8")
    assert load_config(p) == cfg


@settings(max_examples=60, deadline=None)
@given(r=st.one_of(st.integers(max_value=0), st.integers(min_value=4097)))
def test_property_any_out_of_range_rank_is_one_problem_naming_adapter_r(r):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"r={r}"])
    assert info.value.problems == [f"adapter.r: got {r}; allowed: an integer >= 1 and <= 4096"]


@settings(max_examples=60, deadline=None)
@given(v=st.floats(allow_nan=True, allow_infinity=True))
def test_property_learning_rate_is_accepted_exactly_in_its_range(v):
    override = f"learning_rate={v!r}"
    if math.isfinite(v) and 0.0 < v <= 1.0:
        assert load_config(None, [override]).train.learning_rate == v
    else:
        with pytest.raises(ConfigError) as info:
            load_config(None, [override])
        assert len(info.value.problems) == 1
        assert info.value.problems[0].startswith("train.learning_rate: got ")


# ---------------------------------------------------------------------------------------------
# layer specs


@pytest.mark.parametrize("spec,num_layers,expected", [
    ("all", None, None), ("ALL", 12, None), (" all ", 4, None),
    ("top:2", 12, (10, 11)), ("top:2", None, ("top", 2)), ("top2", 4, (2, 3)), ("top:4", 4, (0, 1, 2, 3)),
    ("0,3", None, (0, 3)), ("0,3", 4, (0, 3)), (" 1 , 2 ", None, (1, 2)), ("5", None, (5,)),
    ([0, 3], 4, (0, 3)), ((2,), None, (2,)), (["1", "2"], 3, (1, 2)),
])
def test_parse_layers(spec, num_layers, expected):
    assert parse_layers(spec, num_layers) == expected


@pytest.mark.parametrize("spec,num_layers,message", [
    ("top:0", None, "top:0 must name at least one layer"),
    ("top:-1", None, "top:-1 must name at least one layer"),
    ("top:5", 4, "top:5 asks for more layers than the model has (4)"),
    ("top:x", None, "'top:x' is not `top:K` with K a whole number"),
    ("top", None, "'top' is not `all`, `top:K` or a list of layer indices"),
    ("bottom:2", None, "'bottom:2' is not `all`, `top:K` or a list of layer indices"),
    ("", None, "'' is not `all`, `top:K` or a list of layer indices"),
    ("0,,1", None, "'0,,1' is not `all`, `top:K` or a list of layer indices"),
    ("0,4", 4, "layer indices [4] are outside 0..3"),
    ("-1", None, "layer indices [-1] are negative (layers count from 0)"),
    ([], None, "an empty list names no layer"),
    (["a"], None, "['a'] is not a list of layer indices"),
])
def test_bad_layer_specs_raise_readable_errors(spec, num_layers, message):
    with pytest.raises(ValueError) as info:
        parse_layers(spec, num_layers)
    assert str(info.value) == message


@pytest.mark.parametrize("override,problem", [
    ("layers_to_transform=top:0", "adapter.layers_to_transform: got 'top:0'; top:0 must name at least one layer; "
                                  "allowed: all, top:K, or a list of layer indices"),
    ("layers_to_transform=[]", "adapter.layers_to_transform: got (); an empty list names no layer; "
                               "allowed: all, top:K, or a list of layer indices"),
    ("layers_to_transform=-1", "adapter.layers_to_transform: got '-1'; layer indices [-1] are negative "
                               "(layers count from 0); allowed: all, top:K, or a list of layer indices"),
    ("target_modules=[attn.q, ffn@top:x]", "adapter.target_modules: got 'ffn@top:x'; 'top:x' is not `top:K` "
                                           "with K a whole number"),
    ("target_modules=ffn@", "adapter.target_modules: got 'ffn@'; '' is not `all`, `top:K` or a list of layer "
                            "indices"),
    ("target_modules=[]", "adapter.target_modules: got an empty list; allowed: at least one group or module name"),
    ("target_modules=", "adapter.target_modules: got an empty list; allowed: at least one group or module name"),
])
def test_layer_and_target_cross_checks(override, problem):
    assert problems_of([override]) == [problem]


def test_full_fine_tuning_needs_no_target_modules_and_group_layers_are_accepted():
    assert load_config(None, ["method=full", "target_modules=[]"]).adapter.target_modules == ()
    cfg = load_config(None, ["target_modules=[attn@0, ffn@top:1, query]"])
    assert cfg.adapter.target_modules == ("attn@0", "ffn@top:1", "query")


def test_cross_checks_on_a_directly_built_config():
    bad = RunConfig(adapter=AdapterConfig(layers_to_transform="sideways", target_modules=()))
    problems = cross_checks(bad)
    assert len(problems) == 2
    assert problems[0].startswith("adapter.layers_to_transform: got 'sideways'; ")
    assert problems[1].startswith("adapter.target_modules: got an empty list")


# ---------------------------------------------------------------------------------------------
# model.task: causal-lm (generative SFT)


def test_causal_lm_defaults_to_the_embedded_decoder_unless_a_model_is_given():
    assert load_config(None, []).model.name_or_path == C.EMBEDDED_MODEL
    assert load_config(None, ["task=causal-lm"]).model.name_or_path == C.EMBEDDED_LM
    assert load_config(None, ["task=causal-lm", "name_or_path=some/model"]).model.name_or_path == "some/model"
    sft = load_config(None, ["task=causal-lm"])
    assert (sft.model.max_length, sft.train.per_device_train_batch_size) == (128, 8)
    given = load_config(None, ["task=causal-lm", "max_length=32", "train.per_device_train_batch_size=4"])
    assert (given.model.max_length, given.train.per_device_train_batch_size) == (32, 4)
    classifier = load_config(None, [])
    assert (classifier.model.max_length, classifier.train.per_device_train_batch_size) == (64, 32)
    # the task default survives a round trip through the written config
    cfg = load_config(None, ["task=causal-lm"])
    assert replace(cfg, **{"adapter.r": 4}).model.name_or_path == C.EMBEDDED_LM
    # the data: the instruction demo; generating labels reads labelled data, so the intent demo stays
    assert classifier.data.dataset_name == C.EMBEDDED_DATA
    assert cfg.data.dataset_name == C.EMBEDDED_SFT_DATA
    assert replace(cfg, **{"adapter.r": 4}).data.dataset_name == C.EMBEDDED_SFT_DATA
    generate = load_config(None, ["task=causal-lm", "label_format=generate"])
    assert generate.data.dataset_name == C.EMBEDDED_DATA
    assert load_config(None, ["task=causal-lm", "dataset_name=some/folder"]).data.dataset_name == "some/folder"


def test_keys_of_the_other_task_are_refused_each_named_with_the_fix():
    problems = problems_of(["task=causal-lm", "label_column=intent", "metric_for_best_model=accuracy"])
    assert problems == [
        "data.label_column: got 'intent' but model.task is causal-lm (only task classification reads it); "
        "allowed: leave it at 'label', or set model.task=classification",
        "train.metric_for_best_model: got 'accuracy' but model.task is causal-lm (a causal-lm run computes its "
        "val loss); allowed: auto, loss"]
    # the objective follows what the run computes: generated labels, a prompt set
    generating = load_config(None, ["task=causal-lm", "label_format=generate", "metric_for_best_model=accuracy"])
    assert generating.train.metric_for_best_model == "accuracy"
    prompts = load_config(None, ["task=causal-lm", "prompt_set=p.jsonl", "metric_for_best_model=prompt_novel_chrf"])
    assert prompts.train.metric_for_best_model == "prompt_novel_chrf"
    assert problems_of(["metric_for_best_model=loss"]) == [
        "train.metric_for_best_model: got 'loss' but model.task is classification (a classifier computes these); "
        "allowed: auto, macro_f1, weighted_f1, accuracy, subset_accuracy, micro_f1, samples_f1"]
    problems = problems_of(["prompt_set=p.jsonl"])
    assert problems == ["data.prompt_set: got 'p.jsonl' but model.task is classification (only task causal-lm "
                        "reads it); allowed: leave it at null, or set model.task=causal-lm"]


def test_every_task_only_key_exists_and_names_a_task():
    table = key_table()
    assert set(C.TASK_ONLY_KEYS) <= set(table)
    assert set(C.TASK_ONLY_KEYS.values()) == set(table["model.task"].metadata["choices"])


def test_generated_labels_read_the_text_and_label_columns_under_causal_lm():
    cfg = load_config(None, ["task=causal-lm", "label_format=generate", "text_column=utterance", "label_column=intent"])
    assert (cfg.data.text_column, cfg.data.label_column) == ("utterance", "intent")
    assert problems_of(["label_format=generate"]) == [
        "data.label_format: got 'generate' but model.task is classification (only task causal-lm reads it); "
        "allowed: leave it at 'head', or set model.task=causal-lm"]
    # multi-label generation is not built: the classifier-only keys stay refused
    assert problems_of(["task=causal-lm", "label_format=generate", "multi_label=true"])[0].startswith(
        "data.multi_label: got True but model.task is causal-lm")


def test_chat_data_keys_are_refused_when_generating_labels():
    # a run generating labels reads text_column/label_column: a prompt/completion/messages column would be ignored
    problems = problems_of(["task=causal-lm", "label_format=generate", "prompt_column=question",
                            "completion_column=answer", "messages_column=chat"])
    assert problems == [
        f"data.{key}: got {value!r} but data.label_format is generate (a run generating labels reads "
        f"data.text_column and data.label_column); allowed: leave it at {default!r}, or leave data.label_format at "
        "'head' to learn prompt/completion or chat rows"
        for key, value, default in [("prompt_column", "question", "prompt"),
                                    ("completion_column", "answer", "completion"), ("messages_column", "chat", "messages")]]
    # the same keys under a chat run are read, so they stand
    cfg = load_config(None, ["task=causal-lm", "prompt_column=question", "completion_column=answer"])
    assert (cfg.data.prompt_column, cfg.data.completion_column) == ("question", "answer")


def test_full_fine_tuning_refuses_the_lora_only_keys_it_would_ignore(tmp_path):
    # method=full trains every weight: r, targets, layers, scale, init, dropout and bias set away from their
    # defaults would be silently ignored (and recorded as if they had been used)
    ps = problems_of(["method=full", "layers_to_transform=top:1", "target_modules=[attn.q]", "use_rslora=true",
                      "init_lora_weights=pissa", "r=64", "bias=all"])
    assert len(ps) == 1 and ps[0].startswith("adapter.method: got 'full' with adapter.r=64, ")
    for shown in ("adapter.target_modules=['attn.q']", "adapter.layers_to_transform='top:1'",
                  "adapter.bias='all'", "adapter.use_rslora=True", "adapter.init_lora_weights='pissa'",
                  "only adapter.method=lora reads them"):
        assert shown in ps[0]
    assert problems_of(["method=full", "lora_dropout=0.0"]) and problems_of(["method=full", "lora_alpha=8"])
    assert load_config(None, ["method=full"]).adapter.method == "full"  # defaults are not "set"
    # tune's full fine-tuning probe is its LoRA incumbent's point with method=full: the switch resets those keys
    lora = load_config(None, ["r=16", "lora_alpha=32", "target_modules=[attn.q]", "use_rslora=true"])
    full = replace(lora, **{"adapter.method": "full", "adapter.r": 16, "train.learning_rate": 1e-4})
    assert full.adapter == load_config(None, ["method=full"]).adapter and full.train.learning_rate == 1e-4
    # a full run an older loratune recorded with those keys still loads from its own config.yaml
    old = write(tmp_path, "adapter:\n  method: full\n  r: 64\n  target_modules: [attn.q]\n")
    with pytest.raises(ConfigError):
        load_config(old)
    assert load_config(old, recorded=True).adapter == load_config(None, ["method=full"]).adapter


def test_a_recorded_max_steps_of_0_loads_as_the_epochs_it_trained(tmp_path):
    # an older loratune took max_steps 0 as -1 (train by num_train_epochs); its runs and studies still load, as run
    from loratune.search.tune import cfg_from_yaml

    old = write(tmp_path, "train:\n  max_steps: 0\n  num_train_epochs: 2\n")
    with pytest.raises(ConfigError):
        load_config(old)
    assert load_config(old, recorded=True).train.max_steps == -1
    assert cfg_from_yaml("train:\n  max_steps: 0\n").train.max_steps == -1
    assert load_config(None, ["max_steps=1"]).train.max_steps == 1


def test_a_recorded_loraplus_ratio_beside_adamw_loads_as_the_run_trained(tmp_path):
    """Runs and studies made before train.loraplus_lr_ratio beside adamw was refused recorded it (optimizer adamw,
    ratio 4: read by nothing); predict / evaluate of such a run and tune --resume of such a study exited 2 with a
    fix ('set train.optimizer=loraplus') nobody can apply to a finished run. Only a user's own config is refused."""
    from loratune.search.tune import cfg_from_yaml

    text = "train:\n  optimizer: adamw\n  loraplus_lr_ratio: 4.0\n"
    old = write(tmp_path, text)
    with pytest.raises(ConfigError, match="loraplus_lr_ratio"):
        load_config(old)
    for cfg in (load_config(old, recorded=True), cfg_from_yaml(text),
                cfg_from_yaml("train:\n  loraplus_lr_ratio: 4\n")):  # (adamw, the default optimizer)
        assert (cfg.train.optimizer, cfg.train.loraplus_lr_ratio) == ("adamw", 16)
    # a LoRA+ run keeps its ratio
    plus = write(tmp_path, "train:\n  optimizer: loraplus\n  loraplus_lr_ratio: 4.0\n")
    assert load_config(plus, recorded=True).train.loraplus_lr_ratio == 4
    assert cfg_from_yaml("train:\n  optimizer: loraplus\n  loraplus_lr_ratio: 4\n").train.loraplus_lr_ratio == 4


@pytest.mark.parametrize("given,expected", [
    ("ffn@0,2", ("ffn@0,2",)),
    ("[ffn@0,2]", ("ffn@0,2",)),  # YAML's flow list reads ["ffn@0", 2]
    ('["ffn@0,2"]', ("ffn@0,2",)),
    ("attn.q@0,1,ffn", ("attn.q@0,1", "ffn")),
    ("[attn.q@1, 2, attn.v]", ("attn.q@1,2", "attn.v")),
    ("attn.q, attn.v, ffn@top:2", ("attn.q", "attn.v", "ffn@top:2")),
])
def test_a_comma_inside_a_targets_layer_list_keeps_the_list(given, expected):
    """The README's `group@0,1` split at every comma on the command line: `ffn@0` and a target named `2`."""
    assert load_config(None, [f"target_modules={given}"]).adapter.target_modules == expected


def test_a_list_of_layer_indices_is_not_joined():
    assert load_config(None, ["layers_to_transform=[0,2]"]).adapter.layers_to_transform == (0, 2)
    assert C.split_list("attn.q, , 3") == ["attn.q", "", "3"]  # no `@` before it: a (bad) target of its own


# ---------------------------------------------------------------------------------------------
# LoRA+'s ratio with no LoRA+ (hunt 16): nothing reads it, so it is refused like a LoRA key under method=full

@pytest.mark.parametrize("extra", [[], ["adapter.method=full", "adapter.target_modules=[]"]])
def test_a_loraplus_ratio_without_loraplus_is_refused(extra):
    problems = problems_of(["train.loraplus_lr_ratio=4"] + extra)
    assert problems == ["train.loraplus_lr_ratio: got 4 with train.optimizer=adamw (only LoRA+ reads it); allowed: "
                        "set train.optimizer=loraplus, or leave train.loraplus_lr_ratio at 16"]
    assert load_config(None, ["train.optimizer=loraplus", "train.loraplus_lr_ratio=4"]).train.loraplus_lr_ratio == 4


def test_the_optimizer_help_says_where_loraplus_puts_1d_weights():
    """train.py keeps 1-d weights (biases, norms, DoRA magnitudes) at the base lr, where peft's
    create_loraplus_optimizer puts them at lr x ratio: the help said it followed peft's grouping."""
    doc = C.key_table()["train.optimizer"].metadata["help"]
    assert "create_loraplus_optimizer's grouping" not in doc
    assert "1-d weights: biases, norms, DoRA magnitudes) as with adamw" in doc


def test_a_config_recorded_before_precision_existed_loads_as_the_fp32_it_ran(tmp_path):
    """A run recorded before train.precision existed trained and validated in float32; its config.yaml (every key
    but precision) loaded with today's default auto, so `evaluate` on a bf16 CPU scored in bf16 autocast (val/loss
    14.4814 against the run's 14.6327). Only a recorded config reads a missing key as the older version ran it."""
    import yaml

    from loratune.config import to_dict
    from loratune.precision import detect
    from loratune.search.tune import cfg_from_yaml

    recorded = to_dict(load_config(None, []))
    assert recorded["train"].pop("precision") == "auto"  # as the older version wrote it: no precision key
    text = yaml.safe_dump(recorded, sort_keys=False)
    old = write(tmp_path, text)
    for cfg in (load_config(old, recorded=True), cfg_from_yaml(text)):  # a run's config, a study's base config
        assert cfg.train.precision == "fp32" and not detect(cfg.train.precision, "cpu").autocast
    assert load_config(old).train.precision == "auto"  # a user's own config: today's default
    assert load_config(old, ["train.precision=bf16"], recorded=True).train.precision == "bf16"  # asked for
    recorded["train"]["precision"] = "auto"  # a run that recorded it keeps it
    assert load_config(write(tmp_path, yaml.safe_dump(recorded)), recorded=True).train.precision == "auto"
