"""`loratune assess` on inputs that fooled it: a RoBERTa's reserved positions, currency symbols, near copies."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from loratune.cli import main  # noqa: E402
from support import _save_tokenizer, make_rows, write_jsonl  # noqa: E402


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> str:
    """66 position rows, 2 reserved for RoBERTa's padding offset: 64 usable tokens."""
    import torch
    from transformers import RobertaConfig, RobertaModel

    folder = tmp_path_factory.mktemp("tinyroberta")
    tok = _save_tokenizer(folder)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=66, pad_token_id=tok.pad_token_id,
                               type_vocab_size=1)).save_pretrained(folder)
    return str(folder)


def test_a_roberta_gets_a_max_length_its_positions_take_and_tune_refuses_one_they_do_not(tiny_roberta, tmp_path,
                                                                                         capsys):
    data = tmp_path / "longtxt"
    data.mkdir()
    long = lambda rows: [{"text": " ".join([r["text"]] * 16), "label": r["label"]} for r in rows]  # noqa: E731
    write_jsonl(data / "train.jsonl", long(make_rows(12, seed=1)))
    write_jsonl(data / "validation.jsonl", long(make_rows(5, seed=2)))
    assert main(["assess", "--no-probe", "--json", "--data", str(data), f"name_or_path={tiny_roberta}"]) == 0
    rec = json.loads(capsys.readouterr().out)["recommendation"]
    assert rec["overrides"]["model.max_length"] == 64  # was 66: the raw row count, which train refuses
    assert main(["train", "-q", "--dry-run", "--data", str(data), f"name_or_path={tiny_roberta}", "max_length=64",
                 f"output_dir={tmp_path / 'r'}"]) == 0
    capsys.readouterr()
    # tune trained every trial into "index 66 is out of bounds" (exit 1): refused up front as train refuses it
    assert main(["tune", "-q", "--budget", "2trials", "--study-dir", str(tmp_path / "st"), "--data", str(data),
                 f"name_or_path={tiny_roberta}", "max_length=66", "num_threads=1"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "model.max_length 66 is longer than" in err and "position embeddings cover 64 tokens" in err
    assert "max_length=64" in err and "Traceback" not in err
    assert not (tmp_path / "st").exists()  # refused before the study folder is made


def test_assess_refuses_a_max_length_past_the_model_s_positions_as_train_does(tiny_roberta, tmp_path, capsys):
    """max_length=512 on a 64-position model: assess profiled every text as "0.0%" truncated at 512 (99% of them were
    longer than the 64 tokens the model takes) and its probe failed inside the embedding with an IndexError traceback.
    Refused up front with train's words and fix (model_info.check_max_length), probe or not, CLI and API."""
    from loratune import api
    from loratune.errors import UserError

    data = tmp_path / "longtxt"
    data.mkdir()
    long = lambda rows: [{"text": " ".join([r["text"]] * 16), "label": r["label"]} for r in rows]  # noqa: E731
    write_jsonl(data / "train.jsonl", long(make_rows(12, seed=1)))
    write_jsonl(data / "validation.jsonl", long(make_rows(5, seed=2)))
    said = f"model.max_length 512 is longer than {tiny_roberta} takes: its position embeddings cover 64 tokens"
    for probe in ([], ["--no-probe"]):
        assert main(["assess", *probe, "--data", str(data), f"name_or_path={tiny_roberta}", "max_length=512",
                     "num_threads=1", "--cache-dir", "none"]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert said in err and "fix: set max_length=64 or less" in err and "Traceback" not in err
    with pytest.raises(UserError) as exc:
        api.assess(api.load_config(None, [f"data.dataset_name={data}", f"name_or_path={tiny_roberta}",
                                          "max_length=512"]), probe=False)
    assert said in str(exc.value)
    assert main(["assess", "--no-probe", "--json", "--data", str(data), f"name_or_path={tiny_roberta}",
                 "max_length=64"]) == 0  # the fix it names is taken
    assert json.loads(capsys.readouterr().out)["facts"]["truncated_share"] > 0.9  # 162-token texts cut at 64


def test_the_probe_says_se_n_a_when_the_bootstrap_measured_none(tiny_bert, tmp_path, capsys):
    # 2 validation rows: the bootstrap SE is 0, printed "± 0.000" while val-resolution used the binomial 0.306
    data = tmp_path / "v2"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_rows(15, seed=1))
    write_jsonl(data / "validation.jsonl", [{"text": "lost my card", "label": "card_lost"},
                                            {"text": "reset the pin", "label": "pin"}])
    assert main(["assess", "--data", str(data), f"name_or_path={tiny_bert}", "max_length=16", "num_threads=1",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    probe = out[out.index("probe ("):]
    assert "SE n/a" in probe.split(" on 2 rows")[0] and "± 0.000" not in out


def test_the_splits_table_keeps_its_numbers_whole_on_80_columns(tiny_bert, tmp_path, capsys, monkeypatch):
    # every column was no_wrap: at 80 columns "100.0%" printed as "100.…" and the header "per class" as "per cla…"
    monkeypatch.setenv("COLUMNS", "80")
    data = tmp_path / "longtxt"
    data.mkdir()
    long = lambda rows: [{"text": " ".join([r["text"]] * 16), "label": r["label"]} for r in rows]  # noqa: E731
    write_jsonl(data / "train.jsonl", long(make_rows(12, seed=1)))
    write_jsonl(data / "validation.jsonl", long(make_rows(5, seed=2)))
    assert main(["assess", "--no-probe", "--data", str(data), f"name_or_path={tiny_bert}", "max_length=16"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("split "):out.index("findings")]
    assert "…" not in table and "per class" in table and "max/min" in table
    train = next(x for x in table.splitlines() if x.startswith("train "))
    assert train.split()[-1] == "100.0%" and max(len(x.rstrip()) for x in table.splitlines()) <= 80


def test_assess_refuses_data_train_refuses_for_a_classifier(tiny_bert, tmp_path, capsys):
    # two rows, two labels, no validation: assess --no-probe said 'start with: loratune train ...' and exited 0 (it
    # ran check_max_length alone) where train --dry-run refused 'validation: 0 rows'; both run checks.run_checks
    data = tmp_path / "one_cls"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"text": "how much money do i have", "label": "balance"},
                                       {"text": "send money to my friend", "label": "transfer"}])
    for cmd in (["assess", "--no-probe"], ["train", "--dry-run"]):
        code = main([*cmd, "--data", str(data), f"name_or_path={tiny_bert}", f"output_dir={tmp_path / 'out'}"]
                    if cmd[0] == "train" else [*cmd, "--data", str(data), f"name_or_path={tiny_bert}"])
        captured = capsys.readouterr()
        assert code == 2 and "validation: 0 rows" in captured.err and "start with" not in captured.out, cmd


class _Stop(Exception):
    """Raised after phase 0's assessment: the test counts the checks up to there."""


@pytest.mark.parametrize("task", ["causal-lm", "classification"])
def test_tune_runs_each_check_of_train_once_before_its_first_trial(task, tiny_bert, tmp_path, monkeypatch):
    # tune ran its own subset of train's checks (the data check, the prompt set, max_length), then phase 0's
    # assessment ran checks.run_checks again: causal-lm read its prompt set and checked max_length twice. Now tune
    # runs run_checks once and tells the assessment (start_config(checked=True))
    from collections import Counter

    import loratune.assess as assess_pkg
    from loratune import model_info, sft, tasks, trackers
    from loratune.assess import sft as assess_sft_mod
    from loratune.config import load_config
    from loratune.search.tune import TuneOptions, tune
    from sft_support import make_sft_rows, save_tiny_llama_lm

    calls: Counter = Counter()

    def count(mod, name):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, **k: calls.update([name]) or real(*a, **k))

    for mod, name in ((sft, "read_prompt_set"), (model_info, "check_max_length"), (trackers, "require")):
        count(mod, name)
    real_recipe = tasks.recipe

    def recipe(cfg, what):
        fn = real_recipe(cfg, what)
        return (lambda *a, **k: calls.update(["data check"]) or fn(*a, **k)) if what == "check" else fn

    monkeypatch.setattr(tasks, "recipe", recipe)
    for mod, name in ((assess_sft_mod, "assess_sft"), (assess_pkg, "run_assessment")):
        real_assess = getattr(mod, name)

        def stop(*a, _real=real_assess, **k):
            _real(*a, **k)
            raise _Stop

        monkeypatch.setattr(mod, name, stop)
    data = tmp_path / "data"
    data.mkdir()
    if task == "causal-lm":
        model = save_tiny_llama_lm(tmp_path / "lm", chat_template=False)
        for name, n, seed in (("train", 4, 1), ("validation", 2, 2)):
            write_jsonl(data / f"{name}.jsonl", make_sft_rows(n, seed=seed))
        over = ["task=causal-lm", "max_length=32"]
    else:
        model = tiny_bert
        write_jsonl(data / "train.jsonl", make_rows(6, seed=1))
        write_jsonl(data / "validation.jsonl", make_rows(2, seed=2))
        over = ["max_length=32"]
    cfg = load_config(None, [*over, f"name_or_path={model}", f"dataset_name={data}", "num_threads=1"])
    with pytest.raises(_Stop):
        tune(cfg, TuneOptions(budget="1trials", study_dir=str(tmp_path / "study")))
    expected = {"data check": 1, "require": 1, "check_max_length": 1}
    assert dict(calls) == ({**expected, "read_prompt_set": 1} if task == "causal-lm" else expected)
