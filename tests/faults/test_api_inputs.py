"""What a Python caller may hand the API that the CLI never does (a DataFrame, a dict, None, bytes, a path for a
config, a list of rows for a dataset, numpy integers, a file for a run): each a UserError naming what was given, or
taken as the CLI takes the same option (one checker for both)."""

from __future__ import annotations

import pytest

from support import flat, overrides


def _refused(call) -> str:
    from loratune.errors import UserError

    with pytest.raises(UserError) as exc:
        call()
    return flat(str(exc.value))


@pytest.mark.parametrize("texts, said", [
    ("frame", "texts: a string or a list of strings, not DataFrame"),
    ({"text": "lost my card"}, "texts: a string or a list of strings, not dict"),
    (None, "texts: a string or a list of strings, not NoneType None"),
    (b"lost my card", "texts: a string or a list of strings, not bytes b'lost my card'"),
    (7, "texts: a string or a list of strings, not int 7"),
])
def test_predict_refuses_texts_whose_iteration_is_no_list_of_texts(trained, texts, said):
    import pandas as pd

    from loratune import api

    if texts == "frame":  # its iteration gave the column name 'text': one prediction for the word "text"
        texts = pd.DataFrame({"text": ["lost my card", "reset the pin", "show my funds"]})
    for call in (lambda: api.predict(trained, texts), lambda: api.predict_chunks(trained, texts)):
        text = _refused(call)
        assert said in text and "df['text'].tolist()" in text


def test_predict_takes_a_series_an_array_and_a_tuple_of_texts_as_a_list(trained):
    import numpy as np
    import pandas as pd

    from loratune import api

    texts = ["lost my card", "reset the pin", "show my funds"]
    want = [p["label"] for p in api.predict(trained, texts)]
    for given in (pd.Series(texts), np.array(texts), tuple(texts), pd.DataFrame({"text": texts})["text"]):
        got = api.predict(trained, given)
        assert [p["text"] for p in got] == texts and [p["label"] for p in got] == want


def test_the_config_taking_verbs_refuse_a_path_for_the_config(tmp_path):
    from loratune import api

    for verb in ("prepare", "plan", "assess", "train"):
        text = _refused(lambda: getattr(api, verb)("my.yaml"))
        assert f"api.{verb} takes a RunConfig, not str 'my.yaml'" in text and "api.load_config(" in text
    assert "api.check takes a RunConfig, not str" in _refused(lambda: api.check("my.yaml", None))


def test_api_plan_given_a_model_names_the_memory_planner_it_is_not(tmp_path):
    # api.plan('llama-2-7b') pointed at load_config alone: api.plan is train --dry-run, `loratune plan MODEL` another
    import loratune.plan
    from loratune import api

    text = _refused(lambda: api.plan("llama-2-7b"))
    assert text.startswith("api.plan takes a RunConfig, not str 'llama-2-7b'") and "api.load_config(" in text
    assert ("api.plan is `loratune train --dry-run`; for `loratune plan MODEL` (memory and FLOPs of a model): "
            "loratune.plan.plan_model('llama-2-7b')") in text and callable(loratune.plan.plan_model)
    assert "plan_model" not in _refused(lambda: api.train("my.yaml"))  # said only where the names meet


def test_a_dataset_that_is_no_dataset_is_refused_before_anything_loads(tiny_bert, intent_data, tmp_path):
    from loratune import api

    cfg = api.load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=4, eval_steps=2))
    rows = [{"text": "a", "label": "b"}]
    for verb, call in (("train", lambda: api.train(cfg, dataset=rows, progress=False)),
                       ("plan", lambda: api.plan(cfg, dataset="x")),
                       ("assess", lambda: api.assess(cfg, dataset="x", probe=False)),
                       ("check", lambda: api.check(cfg, rows)),
                       ("tune", lambda: api.tune(cfg, dataset=rows, study_dir=tmp_path / "s"))):
        text = _refused(call)
        assert f"api.{verb}: dataset is a loratune.data.Dataset for model.task=classification, not" in text
        assert "dataset=api.prepare(cfg)" in text
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()
    real = api.prepare(cfg)  # the reader's own dataset is taken as it is
    assert api.plan(cfg, dataset=real)["rows"] == {k: len(v) for k, v in real.splits().items()}


def test_a_dataset_prepared_from_other_data_than_cfg_data_is_refused(tiny_bert, intent_data, tmp_path):
    # api.train(cfg_b, api.prepare(cfg_a)) trained on a's data, wrote config.yaml naming b's, and evaluate then
    # scored b's test split
    from loratune import api
    from support import make_rows, write_jsonl

    other = tmp_path / "other"
    other.mkdir()
    for split, n, seed in (("train", 12, 11), ("validation", 5, 12), ("test", 5, 13)):
        write_jsonl(other / f"{split}.jsonl", make_rows(n, seed, ["card_lost", "balance"]))
    cfg_a = api.load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=4, eval_steps=2))
    cfg_b = api.load_config(None, overrides(tiny_bert, other, tmp_path / "run", max_steps=4, eval_steps=2))
    prepared = api.prepare(cfg_a)
    for verb, call in (("train", lambda: api.train(cfg_b, prepared, progress=False)),
                       ("plan", lambda: api.plan(cfg_b, prepared)),
                       ("tune", lambda: api.tune(cfg_b, dataset=prepared, study_dir=tmp_path / "s"))):
        text = _refused(call)
        assert (f"api.{verb}: dataset was prepared from other data than cfg.data (data.dataset_name "
                f"'{intent_data}' (dataset) vs '{other}' (cfg))") in text, text
        assert "dataset=api.prepare(cfg) for this cfg" in text
    assert not (tmp_path / "run").exists() and not (tmp_path / "s").exists()
    again = api.prepare(cfg_a)  # the same data config, read twice: taken
    assert api.plan(cfg_a, prepared)["rows"] == api.plan(cfg_a, again)["rows"] == {"train": 48, "validation": 20,
                                                                                    "test": 20}


def test_a_dataset_prepared_with_another_seed_is_refused_where_the_seed_drew_its_rows(tiny_bert, intent_data,
                                                                                      tmp_path):
    # api.train(cfg seed 7, api.prepare(cfg seed 42)) trained on the split carved with 42 and recorded seed 7: evaluate
    # re-carved with 7 and scored a validation split most of whose rows were training rows
    from loratune import api
    from loratune.data import load_dataset

    base = overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=4, eval_steps=2)
    carve = [o for o in base if not o.startswith("dataset_name=")] + [f"train_file={intent_data}/train.jsonl"]
    a, b = api.load_config(None, carve), api.load_config(None, carve + ["seed=7"])
    prepared = api.prepare(a)
    assert set(load_dataset(b.data, seed=7).validation.texts) & set(prepared.train.texts)  # what evaluate would score
    for verb, call in (("train", lambda: api.train(b, prepared, progress=False)),
                       ("plan", lambda: api.plan(b, prepared))):
        text = _refused(call)
        assert (f"api.{verb}: dataset was prepared with train.seed 42, cfg has 7: the seed drew the carved "
                "validation split") in text, text
    assert not (tmp_path / "run").exists()
    sub = base + ["max_train_samples=10"]
    text = _refused(lambda: api.plan(api.load_config(None, sub + ["seed=3"]), api.prepare(api.load_config(None, sub))))
    assert "the seed drew the max_train_samples subset" in text
    # a validation file and no subset: the seed draws nothing, the dataset is the same rows under any seed
    given = api.prepare(api.load_config(None, base))
    assert api.plan(api.load_config(None, base + ["seed=7"]), given)["rows"]["validation"] == 20


def test_a_runconfig_changed_with_dataclasses_replace_is_validated_as_config_replace_validates_it(
        tiny_bert, intent_data, tmp_path):
    # an unvalidated r=0 failed inside peft (ValueError) and learning_rate='1e-3' inside torch's Adam (TypeError)
    import dataclasses

    from loratune import api
    from loratune.config import replace
    from loratune.errors import ConfigError

    cfg = api.load_config(None, overrides(tiny_bert, intent_data, tmp_path / "run", max_steps=2, eval_steps=2))
    bad = dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, r=0),
                              train=dataclasses.replace(cfg.train, learning_rate="fast"))
    with pytest.raises(ConfigError) as given:
        api.train(bad, progress=False)
    with pytest.raises(ConfigError) as replaced:
        replace(cfg, **{"adapter.r": 0, "train.learning_rate": "fast"})
    assert given.value.problems == replaced.value.problems and len(given.value.problems) == 2
    with pytest.raises(ConfigError, match="adapter.r"):
        api.plan(dataclasses.replace(cfg, adapter=dataclasses.replace(cfg.adapter, r=0)))
    assert not (tmp_path / "run").exists()
    text_lr = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, learning_rate="1e-3"))
    run = api.train(text_lr, progress=False)  # a number as text is taken as load_config takes it
    assert run["status"] == "completed" and run["config"]["train"]["learning_rate"] == 1e-3



@pytest.mark.parametrize("given, said", [
    ({"study_dir": None}, "study_dir: a folder path (str or Path), not NoneType None"),
    ({"trial_steps": -1}, "trial_steps (--trial-steps): a whole number >= 1, not -1"),
    ({"trial_steps": 0}, "trial_steps (--trial-steps): a whole number >= 1, not 0"),
    ({"trial_steps": 2.5}, "trial_steps (--trial-steps): a whole number >= 1, not 2.5"),
    ({"seed": -1}, "seed (--seed): a whole number from 0 to 4294967295, not -1"),
    ({"heartbeat_s": True}, "heartbeat_s (--heartbeat): a whole number >= 1, not True"),
    ({"thresholds": [("seed_std_max", 0.02)]}, "thresholds: a mapping of rule threshold names to values"),
    ({"target": "0.9"}, "target (--target): a macro-F1 in (0, 1] or a val loss above 0, not '0.9'"),
    ({"target": -1}, "target (--target): a macro-F1 in (0, 1] or a val loss above 0, not -1"),
    ({"fixed": None}, "fixed and arms: lists of names, not NoneType None (fixed)"),
    ({"arms": 3}, "fixed and arms: lists of names, not int 3 (arms)"),
    ({"fixed": [1]}, "fixed and arms: lists of names, not one holding int 1 (fixed)"),
    ({"arms": ["bogus"]}, "arms (--arms): unknown arm(s) 'bogus'; known: loraplus, dora"),
    ({"finish_reserve_s": "x"}, "finish_reserve_s: seconds kept back for the finish, a number >= 0, not 'x'"),
    ({"examples_per_s": -1}, "examples_per_s: the planning throughput, a number above 0, not -1"),
])
def test_api_tune_refuses_a_bad_keyword_as_the_cli_refuses_its_flag(given, said, tmp_path, monkeypatch):
    # study_dir=None was a study in ./None; trial_steps=-1 trials on epochs (the CLI refused --trial-steps -1);
    # thresholds=[...], target='0.9', fixed=None were an AttributeError / TypeError
    from loratune import api
    from loratune.search.study import Study

    def reached(*args, **kwargs):  # the refusal comes before the study is opened (no tuning in this test)
        raise AssertionError("the study was opened")

    monkeypatch.setattr(Study, "open", reached)
    monkeypatch.chdir(tmp_path)
    text = _refused(lambda: api.tune(api.load_config(None, []), **{"study_dir": tmp_path / "s", **given}))
    assert said in text
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no study folder, 's' or 'None'


def test_a_numpy_integer_is_a_whole_number_for_the_api_as_an_int_is(trained):
    import numpy as np

    from loratune import api
    from loratune.search.tune import TuneOptions, check_options

    got = api.predict(trained, ["lost my card"], top_k=np.int64(2))
    assert len(got[0]["top"]) == 2
    opts = check_options(TuneOptions(trial_steps=np.int64(3), seed=np.uint32(7), heartbeat_s=np.int32(5)))
    assert (opts.trial_steps, opts.seed, opts.heartbeat_s) == (3, 7, 5)
    assert all(type(v) is int for v in (opts.trial_steps, opts.seed, opts.heartbeat_s))  # (JSON in the study)
    assert "top_k (--top-k): a whole number >= 1, not True" in _refused(lambda: api.predict(trained, "x", top_k=True))


@pytest.mark.parametrize("flag, value, said", [
    ("--trial-steps", "-1", "argument --trial-steps: a whole number >= 1, not -1"),
    ("--seed", "x", "argument --seed: a whole number from 0 to 4294967295, not 'x'"),
    ("--target", "0", "argument --target: a macro-F1 in (0, 1] or a val loss above 0, not 0.0"),
])
def test_the_cli_refuses_the_same_values_in_the_same_words(flag, value, said, tmp_path, capsys):
    from loratune.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--study-dir", str(tmp_path / "s"), flag, value])
    assert exit_.value.code == 2 and said in flat(capsys.readouterr().err)


def test_an_unknown_arm_is_refused_by_the_cli_and_the_api_in_the_same_words(tmp_path, capsys, monkeypatch):
    # api.tune raised ProtocolSettings' raw ValueError; the CLI wrapped it in a UserError of its own
    from loratune import api
    from loratune.cli import main
    from loratune.search.study import Study

    monkeypatch.setattr(Study, "open", lambda *a, **k: pytest.fail("the study was opened"))
    said = ("arms (--arms): unknown arm(s) 'qlora'; known: loraplus, dora fix: give known arms, e.g. --arms "
            "loraplus,dora (arms=['loraplus', 'dora']), or none")
    assert said in _refused(lambda: api.tune(api.load_config(None, []), arms=["qlora"], study_dir=tmp_path / "a"))
    assert main(["tune", "--study-dir", str(tmp_path / "c"), "--arms", "qlora"]) == 2
    assert said in flat(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_file_given_as_the_run_is_named_a_file(trained, tmp_path):
    from loratune import api

    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a", "label": "b"}\n', encoding="utf-8")
    for call in (lambda: api.predict(data, ["lost my card"]), lambda: api.evaluate(data, split="test")):
        assert f"run directory '{data}' is a file, not a run directory" in _refused(call)
    gone = tmp_path / "none"
    assert f"run directory '{gone}' does not exist" in _refused(lambda: api.predict(gone, ["lost my card"]))


def test_a_refusal_shared_by_the_cli_and_the_api_names_the_fix_in_both_spellings(trained, tmp_path, monkeypatch):
    from loratune import api
    from loratune.search.study import Study

    Study.open(tmp_path / "sd", meta={"strategy": "random"}).close()  # a study already in the folder
    text = _refused(lambda: api.tune(api.load_config(None, []), budget="1trials", study_dir=tmp_path / "sd"))
    assert "pass --resume (resume=True) to continue it, or choose another --study-dir (study_dir=)" in text
    text = _refused(lambda: api.tune(api.load_config(None, []), resume=True, study_dir=tmp_path / "new"))
    assert "run without --resume (resume=False) to start one" in text
    # evaluate takes val as well as validation: the fix names every split it takes
    assert "use test, validation, val, train" in _refused(lambda: api.evaluate(trained, split="dev"))


def test_report_checks_its_out_as_it_checks_its_path(trained, tmp_path):
    # out=5 was a raw TypeError from pathlib
    from loratune import api

    assert _refused(lambda: api.report(trained, out=5)) == (
        "out: a file path (str or Path), not int 5 fix: give the file as a string or a pathlib.Path")
    assert _refused(lambda: api.report(5)).startswith("path: a folder path (str or Path), not int 5")
    assert api.report(trained, out=tmp_path / "r.html") == tmp_path / "r.html" and (tmp_path / "r.html").is_file()


def test_report_out_follows_the_clis_o_rule_a_record_refused_a_folder_gets_its_report(trained, tmp_path, capsys):
    # out=<the run's own run.json> replaced the record with HTML (the CLI refused the same -o); out=<a folder> was
    # "cannot write the report ... (Is a directory)" where `report -o DIR` writes DIR/report.html
    from loratune import api
    from loratune.cli import main

    record = trained / "run.json"
    before = record.read_bytes()
    said = (f"-o (out=) {record}: that file exists and is not a report loratune wrote (it may be a run's own record "
            "or one of this command's inputs); a report would replace it fix: give -o (out=) a new file name")
    assert said in _refused(lambda: api.report(trained, out=record, examples=False))
    assert main(["report", str(trained), "-o", str(record), "--no-examples"]) == 2
    assert said in flat(capsys.readouterr().err)  # the same words from the CLI
    assert record.read_bytes() == before
    assert api.report(trained, out=tmp_path, examples=False) == tmp_path / "report.html"
    assert (tmp_path / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("text, said", [
    ("lost my card \ud83d", "text 2 of 2 has a lone surrogate U+D83D at character 14 (after 'lost my card ')"),
    (b"lost my card \xff".decode("utf-8", "surrogateescape"),
     "text 2 of 2 is not valid UTF-8 (byte 0xff at position 13)"),
])
def test_predict_refuses_a_text_the_tokenizer_cannot_take_in_the_clis_words(trained, text, said, capsys):
    # JSON's cut "\ud83d" and undecodable bytes were a TypeError from inside the tokenizer; the CLI refused them in its
    # own loop (`text argument 2 ...`), which the API skipped
    from loratune import api
    from loratune.cli import main

    for call in (lambda: api.predict(trained, ["reset my pin", text]),
                 lambda: api.predict_chunks(trained, ["reset my pin", text])):
        assert said in _refused(call)
    assert main(["predict", str(trained), "reset my pin", text]) == 2
    assert said in flat(capsys.readouterr().err)
