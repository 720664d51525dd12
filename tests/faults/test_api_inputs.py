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
