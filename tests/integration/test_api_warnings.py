"""The libraries' deprecation notices loratune silences (library_warnings.SILENCED) stay out of the Python API's
output as they stay out of the CLI's: api.predict printed transformers' is_gradient_checkpointing FutureWarning at
every peft load."""

from __future__ import annotations

import warnings

import pytest

from loratune import api
from loratune.cli import main

from support import overrides


@pytest.fixture(scope="module")
def trained(tiny_bert, intent_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("warn") / "run"
    assert main(["train", "-q", *overrides(tiny_bert, intent_data, out, max_steps=8, eval_steps=4)]) == 0
    return out


def test_the_python_api_prints_no_library_deprecation_notice(trained):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # transformers' is_gradient_checkpointing FutureWarning on the peft load
        preds = api.predict(trained, ["what is my balance"])
        scores = api.evaluate(trained)
    assert len(preds) == 1 and preds[0]["label"] and scores
