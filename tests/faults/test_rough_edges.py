"""The rough edges of issue 14, each reproduced first: options after positionals, budgets of zero or
below, the adapter folder's README and modules_to_save, library FutureWarnings on predict/evaluate."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from loratune.cli import main

from support import flat, overrides


def test_predict_options_after_the_run_and_between_texts(trained, capsys):
    capsys.readouterr()
    assert main(["predict", str(trained), "--json", "lost my card", "--top-k", "2", "change my pin"]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["text"] for p in preds] == ["lost my card", "change my pin"] and len(preds[0]["top"]) == 2


def test_no_library_future_warning_on_predict_or_evaluate(trained, capsys):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["predict", str(trained), "lost my card"]) == 0
        assert main(["evaluate", str(trained), "--split", "test"]) == 0
    assert not [w for w in seen if issubclass(w.category, FutureWarning)], [str(w.message) for w in seen]


def test_adapter_folder_has_a_model_card_and_clean_modules_to_save(trained):
    cfg = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    mts = cfg["modules_to_save"]
    assert len(mts) == len(set(mts)) and "score" not in mts and "classifier" in mts
    card = (trained / "adapter" / "README.md").read_text()
    assert card.startswith("# Text classifier trained with loratune") and "PeftModel.from_pretrained" in card
    assert "Provide a quick summary" not in card


@pytest.mark.parametrize("budget,word", [("0trials", "zero"), ("0m", "zero"), ("-5m", "negative"),
                                         ("-3trials", "negative")])
def test_budget_zero_or_negative(budget, word, tmp_path, capsys):
    assert main(["tune", "--study-dir", str(tmp_path / "s"), "--budget", budget]) == 2
    err = flat(capsys.readouterr().err)
    assert f"is {word}: a budget must be positive" in err and "fix:" in err
    assert not (tmp_path / "s").exists()


def test_predict_refuses_a_top_k_below_one_and_a_file_row_without_a_text(trained, tmp_path, capsys):
    capsys.readouterr()
    for k in ("0", "-1"):  # 0 crashed in numpy; -1 sliced [:-1] and showed k - 1 labels
        assert main(["predict", str(trained), "--top-k", k, "hi"]) == 2
        assert "top_k (--top-k): a whole number >= 1" in capsys.readouterr().err
    rows = tmp_path / "p.jsonl"
    for second, said in (('{"utterance": "pin"}', "line 2 has no 'text' column"), ('{"text": null}', "None")):
        rows.write_text('{"text": "lost my card"}\n' + second + "\n", encoding="utf-8")
        assert main(["predict", str(trained), "--file", str(rows)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err


def test_a_run_whose_weights_file_is_gone_is_refused_by_name(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    for f in (run / "adapter").glob("adapter_model.*"):
        f.unlink()
    capsys.readouterr()
    assert main(["predict", str(run), "hi"]) == 2
    assert "has no saved model weights" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--split", "validation"]) == 2


def test_a_max_length_beyond_the_models_positions_is_refused_in_the_dry_run_too(tiny_bert, intent_data, tmp_path,
                                                                                capsys):
    # the tiny BERT has 128 learned positions: max_length 512 failed inside the embedding after the model loaded
    for dry in (["--dry-run"], []):
        assert main(["train", "-q", *dry, *overrides(tiny_bert, intent_data, tmp_path / "run", max_length=512)]) == 2
        err = capsys.readouterr().err
        assert "position embeddings cover 128 tokens" in err and "max_length=128" in err
    assert main(["train", "-q", "--dry-run", *overrides(tiny_bert, intent_data, tmp_path / "run",
                                                        max_length=128)]) == 0


def test_report_and_evaluate_on_a_disk_that_refuses_the_write(trained, monkeypatch, capsys):
    import errno

    import loratune.store as S

    def refuse(path, text):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(S, "write_atomic", refuse)
    capsys.readouterr()
    assert main(["report", str(trained)]) == 2
    err = flat(capsys.readouterr().err)
    assert "cannot write the report to" in err and "Read-only file system" in err and "give -o" in err
    assert main(["evaluate", str(trained), "--split", "validation"]) == 2
    out, err = capsys.readouterr()
    assert "val/macro_f1:" in out  # scored and shown, then the refusal said
    assert "could not be written into" in flat(err) and "Traceback" not in err


def test_the_dry_run_refuses_an_init_from_that_training_refuses(trained, tiny_bert, intent_data, tmp_path, capsys):
    capsys.readouterr()
    for bad in (tmp_path / "nowhere", trained):  # no such folder; a run folder, not its adapter/
        assert main(["train", "--dry-run", "-q", *overrides(tiny_bert, intent_data, tmp_path / "x",
                                                            init_from=bad)]) == 2
        assert "train.init_from:" in capsys.readouterr().err
    assert main(["train", "--dry-run", "-q", *overrides(tiny_bert, intent_data, tmp_path / "x",
                                                        init_from=trained / "adapter")]) == 0


def test_a_run_trained_with_relative_paths_is_evaluated_from_another_folder(tiny_bert, intent_data, tmp_path,
                                                                            monkeypatch, capsys):
    import os
    import shutil

    work = tmp_path / "work"
    shutil.copytree(tiny_bert, work / "tiny-bert")
    shutil.copytree(intent_data, work / "data")
    monkeypatch.chdir(work)
    ov = [o for o in overrides("tiny-bert", Path("data"), Path("runs/rel"))]
    assert main(["train", "-q", *ov]) == 0
    saved = (work / "runs" / "rel" / "config.yaml").read_text()
    assert f"name_or_path: {work / 'tiny-bert'}" in saved and f"dataset_name: {work / 'data'}" in saved
    monkeypatch.chdir(tmp_path)  # elsewhere: the record still names the model and the data
    capsys.readouterr()
    assert main(["evaluate", str(work / "runs" / "rel"), "--split", "validation"]) == 0
    assert main(["predict", str(work / "runs" / "rel"), "lost my card"]) == 0
    assert os.getcwd() == str(tmp_path)


def test_predict_refuses_an_empty_text_and_reads_the_runs_text_column(tiny_bert, intent_data, trained, tmp_path,
                                                                     capsys):
    capsys.readouterr()
    assert main(["predict", str(trained), "lost my card", ""]) == 2  # "" was dropped without a word
    assert "text 2 of 2 is empty" in capsys.readouterr().err
    rows = [json.loads(x) for x in (intent_data / "train.jsonl").read_text().splitlines()][:20]
    data = tmp_path / "utt"
    data.mkdir()
    for split in ("train", "validation"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps({"utterance": r["text"], "label": r["label"]}) + "\n"
                                                     for r in rows), encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "-q", *overrides(tiny_bert, data, run, text_column="utterance", max_steps=4)]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), "--json", "--file", str(data / "validation.jsonl")]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 20  # the run's own data shape: its text_column


def test_the_dry_run_refuses_a_metric_or_probe_file_that_training_refuses(tiny_bert, intent_data, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    unlabelled = tmp_path / "nolabel.jsonl"
    unlabelled.write_text('{"text": "lost my card"}\n', encoding="utf-8")
    for extra, said in (({"metric_for_best_model": "subset_accuracy"}, "subset_accuracy"),
                        ({"probe_file": empty}, "empty"), ({"probe_file": unlabelled}, "label")):
        for dry in (["--dry-run"], []):
            assert main(["train", "-q", *dry, *overrides(tiny_bert, intent_data, tmp_path / "x", **extra)]) == 2
            assert said in capsys.readouterr().err
